"""Draining: in-flight requests are answered and written before the exit, within the shutdown deadline.

In-process tests stop a pipeline on both backends, with the schema cached or not (on asyncio the
requests are then answered from callbacks, with no task to hold the drain open); subprocess tests send
SIGTERM to a real ``streamer run`` and check its exit status.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
import pytest
from anyio.abc import SocketStream, TaskStatus

from streamer.core.graph import build_pipeline
from streamer.core.runtime import EXIT_TIMEOUT
from tests.support import (
    CACHES,
    PAGE_VIEW,
    ROOT,
    SCHEMAS,
    anyio_backend_name,
    compile_text,
    http_port,
    read_jsonl,
    serving,
    sink,
    wait_until,
    worker,
)

pytestmark = pytest.mark.anyio

EVENT = {"schema": PAGE_VIEW, "data": {"url": "https://example.com/"}}
BOTH_BACKENDS = pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side of the subprocess tests; the server's backend is their parameter


def in_process(shutdown_timeout: float = 20) -> str:
    return f"""
name: drained
inputs:
  web: {{type: http, port: 0}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  primary: {{type: controlled, route: all, delivery: {{batch_size: 1}}}}
runtime: {{shutdown_timeout: {shutdown_timeout}}}
"""


@BOTH_BACKENDS
@pytest.mark.parametrize("cache", CACHES)
async def test_stop_answers_and_writes_every_request_in_flight(tmp_path: Path, cache: str) -> None:
    clients = 5
    async with serving(in_process(), tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.block()
        port = http_port(p)
        statuses: list[int] = []
        connection: list[str] = []

        async def send() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)
                statuses.append(response.status_code)
                connection.append(response.headers["connection"])

        async with anyio.create_task_group() as tg:
            for _ in range(clients):
                tg.start_soon(send)
            await primary.waiting.wait()
            queued = worker(p, "primary").send_stream
            await wait_until(lambda: queued.statistics().current_buffer_used == clients - 1, what="all queued")
            p.stop()
            await anyio.sleep(0.2)  # time enough for a drain that does not wait to cut the clients off
            assert statuses == []
            with pytest.raises(httpx.ConnectError):  # no longer accepting
                async with httpx.AsyncClient() as late:
                    await late.post(f"http://127.0.0.1:{port}/events", json=EVENT)
            primary.release()
        assert statuses == [200] * clients
        assert connection == ["close"] * clients  # answered during the drain: not to be reused
    assert p.exit_code == 0
    assert len(primary.lines) == clients


REQUEST = (
    b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
    % len(json.dumps(EVENT).encode())
)


async def read_until_closed(stream: SocketStream) -> bytes:
    received = b""
    with anyio.fail_after(5):
        try:
            while True:
                received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return received


@BOTH_BACKENDS
@pytest.mark.parametrize("cache", CACHES)
async def test_a_drain_closes_idle_connections_and_finishes_requests_begun(tmp_path: Path, cache: str) -> None:
    body = json.dumps(EVENT).encode()
    async with serving(in_process(), tmp_path, cache) as p:
        port = http_port(p)
        async with (
            await anyio.connect_tcp("127.0.0.1", port) as idle,
            await anyio.connect_tcp("127.0.0.1", port) as begun,
        ):
            await idle.send(REQUEST + body)
            answer = b""
            while not answer.endswith(b'{"received":1,"invalid":0}'):
                answer += await idle.receive()
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection:" not in answer.lower()  # kept
            await begun.send(REQUEST)  # the head; the body comes after the drain began
            await wait_until(lambda: len(p.inputs[0].server._connections) == 2, what="both connections open")
            p.stop()
            assert await read_until_closed(idle) == b""  # idle: closed at once, nothing to answer
            await begun.send(body)
            answer = await read_until_closed(begun)
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"connection: close" in head.lower()
        assert payload == b'{"received":1,"invalid":0}'
    assert p.exit_code == 0
    assert len(sink(p, "primary").lines) == 2


@BOTH_BACKENDS
@pytest.mark.parametrize("cache", CACHES)
async def test_a_drain_cut_short_by_the_shutdown_deadline_exits_1(
    tmp_path: Path, cache: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="streamer")
    pipeline = build_pipeline(
        compile_text(in_process(shutdown_timeout=0.3), {"SCHEMAS": str(SCHEMAS)}), anyio_backend_name(),
        base_dir=tmp_path,
    )  # fmt: skip
    codes: list[int] = []
    outcome: list[object] = []

    async def run(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        codes.append(await pipeline.run(task_status=task_status))

    async def send(port: int) -> None:
        try:
            async with httpx.AsyncClient(timeout=30) as client:
                outcome.append((await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)).status_code)
        except httpx.HTTPError as exc:
            outcome.append(type(exc))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(run)
            if cache == "warm":
                await pipeline.resolver.resolve(PAGE_VIEW)
            primary = sink(pipeline, "primary")
            primary.block()  # and never released
            tg.start_soon(send, http_port(pipeline))
            await primary.waiting.wait()
            stopped = anyio.current_time()
            pipeline.stop()
            await wait_until(lambda: codes != [], what="run() returned")
            took = anyio.current_time() - stopped
    assert codes == [EXIT_TIMEOUT] == [1]
    assert pipeline.exit_code == 1
    assert 0.3 <= took < 3
    # Unanswered: the client will send its events again.
    assert outcome == [httpx.RemoteProtocolError]
    assert primary.lines == []
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "streamer"]
    assert ("INFO", "draining pipeline=drained timeout=0.3s") in messages
    assert ("ERROR", "shutdown timed out pipeline=drained; in-flight events may be unwritten") in messages
    assert ("INFO", "pipeline stopped pipeline=drained exit=1 primary.written=0") in messages


# A real ``streamer run``, stopped by signals.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    tmp_path: Path, backend: str, linger: float, shutdown_timeout: float = 20
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    spec = tmp_path / "drain.yml"
    spec.write_text(
        f"""
name: drain
inputs:
  web: {{type: http, port: {port}}}
registry:
  repositories: [{{type: file, path: "{ROOT / 'schemas'}"}}]
sinks:
  valid:
    type: file
    path: {tmp_path / 'valid.jsonl'}
    fsync: batch
    delivery: {{linger: {linger}, batch_size: 100000}}
runtime: {{shutdown_timeout: {shutdown_timeout}}}
"""
    )
    with (tmp_path / "stderr.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", "--backend", backend, str(spec)],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            if process.poll() is not None:
                raise AssertionError((tmp_path / "stderr.log").read_text()) from None
            time.sleep(0.05)
    process.kill()
    raise AssertionError("streamer run did not start listening")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("cache", CACHES)
async def test_sigterm_drains_every_in_flight_request(tmp_path: Path, backend: str, cache: str) -> None:
    # A long linger keeps the requests waiting in the sink's batch when the signal arrives.
    process, port = start(tmp_path, backend, linger=1.5)
    statuses: list[int] = []
    count = 40
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{port}/events"
            if cache == "warm":  # the schema is cached: on asyncio the next requests are answered from callbacks
                assert (await client.post(url, json=EVENT)).status_code == 200

            async def send() -> None:
                response = await client.post(url, json=EVENT)
                statuses.append(response.status_code)

            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(send)
                await anyio.sleep(0.5)
                assert statuses == [], "requests should still be waiting for the batch"
                os.kill(process.pid, signal.SIGTERM)
        code = await anyio.to_thread.run_sync(process.wait, 30)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = (tmp_path / "stderr.log").read_text()
    assert code == 0, stderr
    assert statuses == [200] * count
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == count + (cache == "warm")
    assert "signal received signal=SIGTERM" in stderr
    assert "draining pipeline=drain timeout=20.0s" in stderr
    assert f"pipeline stopped pipeline=drain exit=0 valid.written={count + (cache == 'warm')}" in stderr


async def test_sigterm_with_a_drain_past_the_shutdown_deadline_exits_1(tmp_path: Path) -> None:
    # The batch lingers 30 s, the drain may take 0.5 s: the deadline cuts it short.
    process, port = start(tmp_path, "asyncio", linger=30, shutdown_timeout=0.5)
    outcome: list[object] = []
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def send() -> None:
                try:
                    outcome.append((await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(type(exc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await anyio.sleep(0.5)
                assert outcome == []
                os.kill(process.pid, signal.SIGTERM)
        code = await anyio.to_thread.run_sync(process.wait, 10)
    finally:
        if process.poll() is None:
            process.kill()
    stderr = (tmp_path / "stderr.log").read_text()
    assert code == 1, stderr
    assert outcome == [httpx.RemoteProtocolError]
    assert "shutdown timed out pipeline=drain; in-flight events may be unwritten" in stderr
    assert read_jsonl(tmp_path / "valid.jsonl") == []


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    process, port = start(tmp_path, "asyncio", linger=30)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            async with anyio.create_task_group() as tg:

                async def send() -> None:
                    try:
                        await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)
                    except httpx.HTTPError:
                        pass

                tg.start_soon(send)
                await anyio.sleep(0.5)
                os.kill(process.pid, signal.SIGTERM)
                await anyio.sleep(0.3)
                assert process.poll() is None, "the first signal must drain, not exit"
                started = time.monotonic()
                os.kill(process.pid, signal.SIGTERM)
                code = await anyio.to_thread.run_sync(process.wait, 10)
                assert time.monotonic() - started < 5
                tg.cancel_scope.cancel()
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 130
    assert "second signal, exiting without draining signal=SIGTERM" in (tmp_path / "stderr.log").read_text()
