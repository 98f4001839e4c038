"""Pipeline files: errors at file:line:col with a hint, env interpolation, backend checks, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamer.core.config import ConfigError, interpolate, load_document
from streamer.core.graph import check_backend
from tests.support import ROOT, compile_text

MINIMAL = """\
inputs:
  web:
    type: http
    port: 0
sinks:
  out:
    type: blackhole
"""


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        compile_text(text, environ)
    return [str(p) for p in caught.value.problems]


def test_minimal_pipeline_compiles_with_default_processors() -> None:
    compiled = compile_text(MINIMAL)
    assert [c.spec.__struct_config__.tag for c in compiled.processors] == ["decode", "validate", "annotate"]
    assert compiled.sinks[0].spec.delivery.required is True


def test_unknown_key_points_at_the_key_and_suggests_the_right_one() -> None:
    text = MINIMAL + "    delivery:\n      batchsize: 10\n"
    assert problems(text) == [
        "test.yml:9:7: unknown key `batchsize` in sinks.out.delivery; did you mean `batch_size`?"
    ]


def test_unknown_top_level_key_is_refused() -> None:
    assert problems("input: {}\n" + MINIMAL) == [
        "test.yml:1:1: unknown key `input` in (top level); did you mean `inputs`?"
    ]


def test_wrong_type_points_at_the_value() -> None:
    text = MINIMAL.replace("port: 0", "port: eighty")
    [message] = problems(text)
    assert message.startswith("test.yml:4:11: inputs.web.port: Expected `int`")


def test_value_out_of_range() -> None:
    text = MINIMAL + "    delivery: {batch_size: 0}\n"
    [message] = problems(text)
    assert message.startswith("test.yml:8:28: sinks.out.delivery.batch_size: Expected `int` >= 1")


def test_unknown_connector_type_suggests_a_known_one() -> None:
    [message] = problems(MINIMAL.replace("type: blackhole", "type: blakhole"))
    assert message.startswith("test.yml:7:11: unknown sink type `blakhole`; did you mean `blackhole`?")


def test_missing_required_key_names_it() -> None:
    [message] = problems(MINIMAL.replace("type: blackhole", "type: file"))
    assert message == "test.yml:7:5: sinks.out is missing the required key `path`"


def test_every_connector_problem_is_reported_at_once() -> None:
    text = MINIMAL.replace("port: 0", "port: x").replace("type: blackhole", "type: nope")
    assert [m.split(":")[1] for m in problems(text)] == ["4", "7"]


def test_yaml_syntax_error_has_a_position() -> None:
    with pytest.raises(ConfigError) as caught:
        load_document("inputs: [1\nsinks: 2\n", "bad.yml")
    assert str(caught.value).startswith("bad.yml:2:")
    assert "YAML syntax" in str(caught.value)


def test_empty_inputs_and_sinks_are_refused() -> None:
    assert problems("inputs: {}\nsinks: {}\n") == [
        "test.yml:1:9: `inputs` is empty; name at least one input",
        "test.yml:2:8: `sinks` is empty; name at least one sink",
    ]


class TestInterpolation:
    def test_defined_default_and_literal_dollar(self) -> None:
        document = load_document("a: ${HOST}:${PORT:-8080}\nb: cost $$5\nc: ${EMPTY:-}\n", "x.yml")
        assert interpolate(document, {"HOST": "h"}) == []
        assert document.data == {"a": "h:8080", "b": "cost $5", "c": ""}

    def test_undefined_variable_without_default_is_an_error_at_its_value(self) -> None:
        document = load_document("inputs:\n  web:\n    host: ${NOPE}\n", "x.yml")
        [problem] = interpolate(document, {})
        assert str(problem) == (
            "x.yml:3:11: environment variable `NOPE` is not set; set it or give a default: ${NOPE:-value}"
        )

    def test_a_value_cannot_change_the_document_structure(self) -> None:
        injected = "x\nsinks:\n  evil: {type: stdout}"
        compiled = compile_text(MINIMAL.replace("type: blackhole", "type: file\n    path: ${P}"), {"P": injected})
        assert [s.name for s in compiled.sinks] == ["out"]
        assert compiled.sinks[0].spec.path == injected

    def test_interpolated_numbers_are_converted(self) -> None:
        compiled = compile_text(MINIMAL.replace("port: 0", "port: ${PORT:-9000}"), {})
        assert compiled.inputs[0].spec.port == 9000

    def test_malformed_variable(self) -> None:
        document = load_document("a: ${1X}\n", "x.yml")
        [problem] = interpolate(document, {})
        assert "malformed variable" in str(problem)


def test_asyncio_only_connector_is_refused_on_trio_naming_it() -> None:
    compiled = compile_text(MINIMAL.replace("type: blackhole", "type: asyncio_only"))
    check_backend(compiled, "asyncio")
    with pytest.raises(ConfigError) as caught:
        check_backend(compiled, "trio")
    assert str(caught.value) == (
        "test.yml:7:11: `asyncio_only` at sinks.out runs only on asyncio (uses an asyncio-only client); "
        "run with --backend asyncio or choose another connector"
    )


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_cli_lint_prints_file_line_col_and_exits_1(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(MINIMAL + "    delivery: {lingr: 1}\n")
    result = run_cli("lint", str(broken))
    assert result.returncode == 1
    assert f"{broken}:8:16: unknown key `lingr` in sinks.out.delivery; did you mean `linger`?" in result.stderr


def test_cli_lint_accepts_the_quickstart() -> None:
    result = run_cli("lint", "pipelines/quickstart.yml")
    assert result.returncode == 0, result.stderr


def test_cli_run_refuses_a_broken_file_without_starting(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("inputs: {}\nsinks: {}\n")
    result = run_cli("run", str(broken))
    assert result.returncode == 1
    assert f"{broken}:1:9:" in result.stderr


def test_cli_schema_is_json_schema_naming_connectors() -> None:
    result = run_cli("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    text = json.dumps(schema)
    for name in ("HttpInputSpec", "FileSinkSpec", "FileRepositorySpec", "SelfDescribingSpec"):
        assert name in text
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema)


def test_cli_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("streamer ")


def test_gc_threshold_defaults_and_zero_keeps_pythons_collector() -> None:
    import gc

    from streamer.cli import tune_gc

    assert compile_text(MINIMAL).runtime.gc_threshold == 50_000
    assert compile_text("runtime:\n  gc_threshold: 0\n" + MINIMAL).runtime.gc_threshold == 0
    before = gc.get_threshold()
    try:
        tune_gc(0)
        assert gc.get_threshold() == before
        tune_gc(12_345)
        assert gc.get_threshold() == (12_345, *before[1:])
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def test_negative_gc_threshold_is_refused() -> None:
    assert any("gc_threshold" in p or ">= 0" in p for p in problems("runtime:\n  gc_threshold: -1\n" + MINIMAL))


def test_an_unquoted_yaml_timestamp_reads_as_its_iso_text() -> None:
    # YAML makes these timestamps and dates; a datetime field parses the text, a string field keeps it.
    document = load_document("at: 2026-01-01T02:00:00+02:00\nday: 2026-01-01\nname: events\n", "test.yml")
    assert document.data == {"at": "2026-01-01T02:00:00+02:00", "day": "2026-01-01", "name": "events"}
