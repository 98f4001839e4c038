"""File and stdin inputs (replay), and the file sink's rotation and fsync policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support import ROOT, http_port, read_jsonl, run_to_end, running

pytestmark = pytest.mark.anyio

GOOD = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": "https://example.com/"}}
BAD = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": 5}}


def replay_pipeline(source: str, sink_extra: str = "") -> str:
    return f"""
inputs:
  replay: {source}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  valid: {{type: file, path: valid.jsonl, route: valid{sink_extra}}}
  invalid: {{type: file, path: invalid.jsonl, route: invalid}}
"""


async def test_file_input_replays_lines_and_keeps_bad_ones(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD)] * 3 + ["{not json", json.dumps(BAD), "", json.dumps({"no": "schema"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    await run_to_end(replay_pipeline("{type: file, path: in.jsonl}"), tmp_path)
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 3
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["errors"][0]["keyword"] for e in invalid] == ["decode", "type", "self_describing"]
    assert invalid[0]["payload"] == "{not json"


async def test_invalid_envelopes_can_be_replayed_after_a_fix(tmp_path: Path) -> None:
    """An envelope written by a sink is read back as itself (same id) and validated again."""
    (tmp_path / "in.jsonl").write_text(json.dumps(GOOD) + "\n")
    await run_to_end(replay_pipeline("{type: file, path: in.jsonl}"), tmp_path)
    [first] = read_jsonl(tmp_path / "valid.jsonl")
    (tmp_path / "again").mkdir()
    (tmp_path / "again" / "in.jsonl").write_text((tmp_path / "valid.jsonl").read_text())
    await run_to_end(replay_pipeline("{type: file, path: in.jsonl}"), tmp_path / "again")
    [second] = read_jsonl(tmp_path / "again" / "valid.jsonl")
    assert second["id"] == first["id"]
    assert second["collector_tstamp"] == first["collector_tstamp"]


def test_stdin_pipeline_exits_0_when_input_ends_with_every_line_written(tmp_path: Path) -> None:
    spec = tmp_path / "stdin.yml"
    spec.write_text(replay_pipeline("{type: stdin}").replace("${SCHEMAS}", str(ROOT / "schemas")))
    data = "\n".join([json.dumps(GOOD)] * 50 + [json.dumps(BAD)]) + "\n"
    result = subprocess.run(
        [sys.executable, "-m", "streamer", "run", str(spec)],
        input=data, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 50
    assert len(read_jsonl(tmp_path / "invalid.jsonl")) == 1


def http_pipeline(sink_extra: str) -> str:
    return f"""
inputs:
  web: {{type: http, port: 0}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  valid: {{type: file, path: valid.jsonl, route: valid{sink_extra}}}
"""


async def post_events(port: int, count: int, pause: float = 0.0) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(count):
            response = await client.post(f"http://127.0.0.1:{port}/events", json=GOOD)
            assert response.status_code == 200
            await anyio.sleep(pause)


async def test_file_sink_rotates_by_size_and_fsyncs(tmp_path: Path) -> None:
    async with running(http_pipeline(", fsync: batch, rotate: {max_bytes: 1500}"), tmp_path) as pipeline:
        await post_events(http_port(pipeline), 10)
    rotated = sorted(tmp_path.glob("valid-*.jsonl"))
    current = tmp_path / "valid.jsonl"
    # One event per write, each line of the same length: a file is rotated after the write that
    # brings it to 1500 bytes, so each rotated file holds ceil(1500 / line) events.
    [length] = {len(line) for path in [*rotated, current] for line in path.read_bytes().splitlines(keepends=True)}
    per_file = -(-1500 // length)
    assert [len(read_jsonl(path)) for path in rotated] == [per_file] * (10 // per_file)
    assert [path.stat().st_size for path in rotated] == [per_file * length] * (10 // per_file)
    assert len(read_jsonl(current)) == 10 % per_file


async def test_file_sink_rotates_by_age(tmp_path: Path) -> None:
    async with running(http_pipeline(", rotate: {max_age: 0.05}"), tmp_path) as pipeline:
        await post_events(http_port(pipeline), 2, pause=0.1)
    [rotated] = tmp_path.glob("valid-*.jsonl")
    assert len(read_jsonl(rotated)) == 1
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 1


async def test_decoded_lines_with_malformed_contexts_are_invalid(tmp_path: Path) -> None:
    lines = [
        {**GOOD, "contexts": "nope"},
        {**GOOD, "contexts": [{"schema": 5, "data": {}}]},
        {"schema": GOOD["schema"]},
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    await run_to_end(replay_pipeline("{type: file, path: in.jsonl}"), tmp_path)
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [(e["errors"][0]["path"], e["errors"][0]["keyword"]) for e in invalid] == [
        ("$.contexts", "contexts"), ("$.contexts[0]", "contexts"), ("$", "self_describing")
    ]


async def test_a_sink_that_cannot_open_fails_the_start_cleanly(tmp_path: Path) -> None:
    import gc

    from streamer.core.graph import build_pipeline
    from tests.support import anyio_backend_name, compile_text

    (tmp_path / "blocker").write_text("a file where a directory should be")
    spec = replay_pipeline("{type: stdin}").replace("path: valid.jsonl", "path: blocker/valid.jsonl")
    pipeline = build_pipeline(compile_text(spec, {"SCHEMAS": "schemas"}), anyio_backend_name(), base_dir=tmp_path)
    with pytest.raises(FileExistsError, match=r"\[Errno 17\] File exists: '.*/blocker'"):
        await pipeline.run()
    del pipeline
    gc.collect()  # an unclosed buffer would raise a ResourceWarning here (warnings are errors)


def leaves(group: BaseException) -> list[BaseException]:
    """The exceptions inside nested exception groups."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in leaves(inner)]
    return [group]


async def test_a_file_input_stops_when_a_required_sink_fails(tmp_path: Path) -> None:
    """Documented: a chunk a required sink fails to write stops the run with an error, and no more is read."""
    from streamer.core.delivery import DeliveryFailed
    from streamer.core.graph import build_pipeline
    from tests.support import SCHEMAS, anyio_backend_name, compile_text, sink

    line = json.dumps({**GOOD, "data": {"url": "https://example.com/"}}).encode()
    line += b" " * (255 - len(line)) + b"\n"  # 256 bytes: a 64 KiB chunk holds 256 lines
    (tmp_path / "in.jsonl").write_bytes(line * 1024)  # 4 chunks
    spec = """
inputs:
  replay: {type: file, path: in.jsonl, max_in_flight: 1}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  primary: {type: controlled, route: all, delivery: {retries: 0}}
"""
    pipeline = build_pipeline(compile_text(spec, {"SCHEMAS": str(SCHEMAS)}), anyio_backend_name(), base_dir=tmp_path)
    primary = sink(pipeline, "primary")
    primary.fail_with = OSError("disk on fire")
    with anyio.fail_after(10), pytest.raises(BaseExceptionGroup) as raised:
        await pipeline.run()
    [error] = leaves(raised.value)
    assert isinstance(error, DeliveryFailed)
    assert str(error) == "sink 'primary' failed to write: disk on fire"
    assert primary.attempts == 1  # the first chunk; the run stopped instead of reading on
    assert pipeline.statistics()["primary"]["failed"] == 256
    assert primary.lines == []
