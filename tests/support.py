"""Helpers for tests: run pipelines in-process, find services, fail under CI when one is missing."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamer.connectors import BUILTIN, IMPLICIT
from streamer.core.catalog import Catalog
from streamer.core.config import ConfigError, interpolate, load_document
from streamer.core.graph import build_pipeline
from streamer.core.runtime import Pipeline
from streamer.core.spec import CompiledSpec, compile_document

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_service(available: bool, what: str, how: str) -> None:
    """Skip a test whose service is missing, saying how to get it; under CI=true, fail instead."""
    if available:
        return
    message = f"{what} is not available: {how}"
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def test_catalog() -> Catalog:
    """The built-in connectors plus the test-only ones in tests/connectors.py."""
    from tests.connectors import TEST_CONNECTORS

    table = {kind: dict(entries) for kind, entries in BUILTIN.items()}
    for kind, entries in TEST_CONNECTORS.items():
        table.setdefault(kind, {}).update(entries)
    return Catalog(table, implicit=IMPLICIT)


def compile_text(text: str, environ: dict[str, str] | None = None, file: str = "test.yml") -> CompiledSpec:
    document = load_document(text, file)
    problems = interpolate(document, environ if environ is not None else {})
    if problems:
        raise ConfigError(problems)
    return compile_document(document, test_catalog())


def sink(pipeline: Pipeline, name: str) -> Any:
    """The sink object named ``name`` in a running pipeline."""
    return next(w.sink for w in pipeline.workers if w.name == name)


@asynccontextmanager
async def running(text: str, tmp_path: Path, environ: dict[str, str] | None = None) -> AsyncIterator[Pipeline]:
    """Run a pipeline from YAML text in this event loop; drain it on exit.

    Relative paths in the spec resolve against ``tmp_path``; ``${SCHEMAS}`` is the repo's schemas folder.
    """
    env = {"SCHEMAS": str(SCHEMAS), "TMP": str(tmp_path), **(environ or {})}
    compiled = compile_text(text, env)
    pipeline = build_pipeline(compiled, anyio_backend_name(), base_dir=tmp_path)
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.run)
        try:
            yield pipeline
        finally:
            pipeline.stop()


async def run_to_end(text: str, tmp_path: Path, timeout: float = 20.0) -> Pipeline:
    """Run a pipeline whose inputs end by themselves (files); return it once drained."""
    compiled = compile_text(text, {"SCHEMAS": str(SCHEMAS), "TMP": str(tmp_path)})
    pipeline = build_pipeline(compiled, anyio_backend_name(), base_dir=tmp_path)
    with anyio.fail_after(timeout):
        assert await pipeline.run() == 0
    return pipeline


def anyio_backend_name() -> str:
    import sniffio

    return sniffio.current_async_library()


def http_port(pipeline: Pipeline, input_name: str | None = None) -> int:
    """The port an HTTP input bound (configure ``port: 0`` in tests)."""
    for pipeline_input in pipeline.inputs:
        if input_name is None or pipeline_input.name == input_name:
            server: Any = getattr(pipeline_input, "server", None)
            if server is not None and server.bound_port is not None:
                return int(server.bound_port)
    raise LookupError("no running HTTP input")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
