"""A pipeline whose connector needs a package that is not installed is refused by lint and run.

The CLI runs in a subprocess whose ``sys.modules`` says the package is missing (``None`` there makes
``import`` and ``find_spec`` fail as for a package never installed), so the real check runs on the
real catalog. Every built-in connector whose module imports an optional client library declares it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from streamer.connectors import default_catalog
from streamer.core.catalog import KINDS
from streamer.core.config import ConfigError
from streamer.core.graph import build_pipeline
from tests.support import ROOT, compile_text

HTTP_REGISTRY = """\
inputs:
  web:
    type: http
    port: 0
registry:
  repositories:
    - type: file
      path: schemas
    - type: http
      url: http://127.0.0.1:1/
sinks:
  out: {type: file, path: out.jsonl}
"""
HTTP_MESSAGE = (
    "`http` at registry.repositories.1 needs httpx, which is not installed: pip install 'streamer[registry-http]'"
)

TEST_SINK = """\
inputs:
  web:
    type: http
    port: 0
sinks:
  out: {type: file, path: out.jsonl}
  store:
    type: needs_missing
"""
TEST_SINK_MESSAGE = (
    "`needs_missing` at sinks.store needs no_such_module_xyz, which is not installed: pip install no_such_module_xyz"
)

OPTIONAL_CLIENTS = {
    # module imported -> distribution its extra must install
    "httpx": "httpx",
    "aiokafka": "aiokafka",
    "asyncpg": "asyncpg",
    "aiobotocore": "aiobotocore",
    "nats": "nats-py",
    "pymongo": "pymongo",
}
_IMPORT = re.compile(r"^\s*(?:import|from)\s+(" + "|".join(OPTIONAL_CLIENTS) + r")\b", re.MULTILINE)

# Runs streamer's CLI with `missing` unimportable and, optionally, the test connectors in the catalog.
WRAPPER = """\
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
if sys.argv[2] == "test-connectors":
    from streamer.connectors import BUILTIN
    from tests.connectors import TEST_CONNECTORS
    for kind, entries in TEST_CONNECTORS.items():
        BUILTIN.setdefault(kind, {}).update(entries)
from streamer.cli import main
raise SystemExit(main(sys.argv[3:]))
"""


def cli(
    *args: str, missing: str = "httpx", test_connectors: bool = False, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRAPPER, missing, "test-connectors" if test_connectors else "-", *args],
        cwd=cwd,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["lint", "run"])
def test_an_http_registry_without_httpx_is_refused_naming_the_extra(tmp_path: Path, command: str) -> None:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(HTTP_REGISTRY)
    result = cli(command, str(pipeline), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{pipeline}:9:13: {HTTP_MESSAGE}"]
    assert not (tmp_path / "out.jsonl").exists()  # run started nothing


def test_the_same_pipeline_passes_lint_when_httpx_is_there(tmp_path: Path) -> None:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(HTTP_REGISTRY)
    result = cli("lint", str(pipeline), missing="no_such_module_xyz", cwd=tmp_path)
    assert (result.returncode, result.stderr) == (0, f"{pipeline}: ok\n")


@pytest.mark.parametrize("command", ["lint", "run"])
def test_a_connector_requiring_a_missing_module_is_refused(tmp_path: Path, command: str) -> None:
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(TEST_SINK)
    result = cli(command, str(pipeline), missing="", test_connectors=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{pipeline}:8:11: {TEST_SINK_MESSAGE}"]
    assert not (tmp_path / "out.jsonl").exists()


def test_both_problems_and_a_backend_problem_are_reported_together(tmp_path: Path) -> None:
    text = HTTP_REGISTRY + "  store:\n    type: needs_missing\n  slow:\n    type: asyncio_only\n"
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(text)
    result = cli("lint", "--backend", "trio", str(pipeline), test_connectors=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [  # in the order of the file
        f"{pipeline}:9:13: {HTTP_MESSAGE}",
        f"{pipeline}:14:11: {TEST_SINK_MESSAGE}",
        f"{pipeline}:16:11: `asyncio_only` at sinks.slow runs only on asyncio (uses an asyncio-only client); "
        "run with --backend asyncio or choose another connector",
    ]


def test_build_pipeline_refuses_too() -> None:
    compiled = compile_text(TEST_SINK, file="in-process.yml")
    with pytest.raises(ConfigError) as caught:
        build_pipeline(compiled, "asyncio")
    assert str(caught.value) == f"in-process.yml:8:11: {TEST_SINK_MESSAGE}"


def _extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def test_every_builtin_connector_importing_an_optional_client_declares_it() -> None:
    catalog = default_catalog()
    extras = _extras()
    checked = []
    for kind in KINDS:
        for type_name in catalog.names(kind):
            cls = catalog.load(kind, type_name)
            source = inspect.getsource(importlib.import_module(cls.__module__))
            imported = sorted(set(_IMPORT.findall(source)))
            requires = tuple(getattr(cls, "requires", ()))
            extra = getattr(cls, "extra", None)
            where = f"{kind} {type_name} ({cls.__module__}.{cls.__name__})"
            for module in imported:
                assert module in requires, f"{where} imports {module} but does not list it in `requires`"
            if requires:
                assert extra is not None, f"{where} requires {requires} but names no `extra` installing them"
                assert extra in extras, f"{where}: extra {extra!r} is not in pyproject.toml"
                for module in requires:
                    distribution = OPTIONAL_CLIENTS.get(module, module)
                    assert any(re.match(rf"{re.escape(distribution)}\b", r) for r in extras[extra]), (
                        f"{where}: streamer[{extra}] does not install {distribution} (for `import {module}`)"
                    )
            checked.append((kind, type_name, imported))
    # The scan saw the connectors that do import client libraries.
    assert ("repository", "http", ["httpx"]) in checked
