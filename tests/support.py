"""Helpers for tests: run pipelines in-process, find services, fail under CI when one is missing."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamer.connectors import BUILTIN, IMPLICIT
from streamer.core.catalog import Catalog
from streamer.core.config import ConfigError, interpolate, load_document
from streamer.core.graph import build_pipeline
from streamer.core.runtime import Pipeline, SinkWorker
from streamer.core.spec import CompiledSpec, compile_document

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
CACHES = ["cold", "warm"]
"""Parameters for :func:`serving`: whether the schema of the requests is cached before the first one."""


PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
"""The machine's PostgreSQL, database ``test`` (trust auth), that connector tests share."""


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


async def run_to_end(
    text: str, tmp_path: Path, timeout: float = 20.0, environ: dict[str, str] | None = None
) -> Pipeline:
    """Run a pipeline whose inputs end by themselves (files); return it once drained."""
    compiled = compile_text(text, {"SCHEMAS": str(SCHEMAS), "TMP": str(tmp_path), **(environ or {})})
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
    # split on "\n" only: str.splitlines would also split inside a string holding U+2028 or U+0085
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


@asynccontextmanager
async def serving(
    text: str, tmp_path: Path, cache: str, uri: str = PAGE_VIEW, environ: dict[str, str] | None = None
) -> AsyncIterator[Pipeline]:
    """:func:`running`, with the schema ``uri`` resolved before any request (``cache="warm"``) or not ("cold").

    Warm, an HTTP request on asyncio is processed, routed and answered from the server's callbacks
    (``submit.nowait``, ``Delivery.on_done``): no task is started for it. Cold, the first requests wait
    for the schema in a task, and are answered from it. Acknowledgement and drain tests run both.
    """
    async with running(text, tmp_path, environ) as pipeline:
        try:
            if cache == "warm":
                await pipeline.resolver.resolve(uri)
                assert pipeline.resolver.lookup(uri) is not None
            else:
                assert cache == "cold", cache
                assert pipeline.resolver.lookup(uri) is None
            yield pipeline
        except BaseException:
            pipeline.kill()  # a failed test may leave a sink blocked: do not wait for a drain
            raise


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` (state that has no event to wait on: stream statistics, counters) until true."""
    try:
        with anyio.fail_after(timeout):
            while not condition():  # noqa: ASYNC110 - the state polled has no event
                await anyio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not true within {timeout} s: {what or condition}") from None


def worker(pipeline: Pipeline, name: str) -> SinkWorker:
    """The sink worker named ``name``."""
    return next(w for w in pipeline.workers if w.name == name)


class TcpProxy:
    """A TCP proxy to a local server, in the test's event loop (asyncio), that a test can cut and restore.

    Cut (:meth:`cut`, :meth:`stop`), every connection through it is closed and new ones are refused, which is
    what a client sees of a server whose host went away; :meth:`start` again listens on the same port, so a
    server that advertises the proxy's port (a Kafka broker) is reachable again.
    """

    def __init__(self, target_port: int, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        """Refuse new connections and abort the open ones, at once."""
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        """:meth:`cut`, then wait until the listening socket is closed (so :meth:`start` can take the port)."""
        server = self._server
        self.cut()
        self._server = None
        if server is not None:
            await server.wait_closed()
