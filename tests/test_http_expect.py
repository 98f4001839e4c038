"""``Expect: 100-continue``: the server says ``100 Continue`` at once instead of leaving the client to wait.

curl (for large bodies), .NET and some SDKs send the head alone and wait for the interim response
before the body; without it they wait about a second per request. Found by the fuzz suite's header
mutations (tests/fuzz), checked here on both backends and both servers.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from tests.support import http_port, running

pytestmark = pytest.mark.anyio

EVENT = json.dumps({"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": "https://e.com/"}}).encode()


def pipeline(server: str, max_body: int = 1_048_576) -> str:
    return f"""
inputs:
  web:
    type: http
    port: 0
    server: {server}
    max_body_bytes: {max_body}
    routes: [{{type: self_describing, path: /events}}]
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  out: {{type: file, path: out.jsonl}}
"""


def head(length: int, *extra: str) -> bytes:
    lines = ["POST /events HTTP/1.1", "host: x", "content-type: application/json", f"content-length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_until_closed(stream: anyio.abc.ByteStream) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while True:
            try:
                data += await stream.receive()
            except anyio.EndOfStream:
                return data


@pytest.mark.parametrize("server", ["auto", "anyio_streams"])
async def test_the_client_gets_100_continue_then_the_answer(tmp_path: Path, server: str) -> None:
    async with running(pipeline(server), tmp_path) as running_pipeline:
        async with await anyio.connect_tcp("127.0.0.1", http_port(running_pipeline)) as stream:
            await stream.send(head(len(EVENT), "Expect: 100-continue", "connection: close"))
            with anyio.fail_after(0.5):  # far less than the second a client waits before giving up on it
                interim = await stream.receive()
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send(EVENT)
            final = await read_until_closed(stream)
    status, _, body = final.partition(b"\r\n\r\n")
    assert status.split(b"\r\n")[0] == b"HTTP/1.1 200 OK"
    assert json.loads(body) == {"received": 1, "invalid": 0}


@pytest.mark.parametrize("server", ["auto", "anyio_streams"])
async def test_no_100_continue_when_the_body_came_along_or_the_head_is_refused(tmp_path: Path, server: str) -> None:
    async with running(pipeline(server, max_body=1_000), tmp_path) as running_pipeline:
        port = http_port(running_pipeline)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head(len(EVENT), "Expect: 100-continue", "connection: close") + EVENT)
            along = await read_until_closed(stream)
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(head(5_000, "Expect: 100-continue"))
            refused = await read_until_closed(stream)
    assert along.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"100 Continue" not in along
    assert refused.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert json.loads(refused.partition(b"\r\n\r\n")[2]) == {
        "error": "body_too_large", "message": "the request body is larger than 1000 bytes",
    }
