"""SIGTERM to a real ``streamer run``: in-flight requests are answered, written, and the exit is 0."""

from __future__ import annotations

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

from tests.support import ROOT, read_jsonl

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client side; the server's backend is the parameter below

EVENT = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": "https://example.com/"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(tmp_path: Path, backend: str, linger: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    spec = tmp_path / "drain.yml"
    spec.write_text(
        f"""
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
runtime: {{shutdown_timeout: 20}}
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
async def test_sigterm_drains_every_in_flight_request(tmp_path: Path, backend: str) -> None:
    # A long linger keeps the first requests waiting in the sink's batch when the signal arrives.
    process, port = start(tmp_path, backend, linger=1.5)
    statuses: list[int] = []
    count = 40
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def send() -> None:
                response = await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)
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
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == count
    assert "draining" in stderr


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
