"""Bad clients get a 4xx or a closed connection, and the server keeps serving everyone else."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import anyio
import anyio.lowlevel
import httpx
import pytest
from anyio.abc import SocketStream

from tests.support import http_port, need_service, read_jsonl, running

pytestmark = pytest.mark.anyio

EVENT = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": "https://example.com/"}}
EVENT_BYTES = json.dumps(EVENT).encode()

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    max_body_bytes: 4096
    header_timeout: 0.5
    body_timeout: 0.5
    idle_timeout: 1.0
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


async def exchange(port: int, raw: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server sends until it closes (or the timeout)."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(raw)
        return await read_until_closed(stream, read_timeout)


async def read_until_closed(stream: SocketStream, timeout: float) -> bytes:
    received = b""
    with anyio.move_on_after(timeout):
        try:
            while True:
                received += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return received


def status_and_body(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


async def still_serving(port: int) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)
    assert (response.status_code, response.json()) == (200, {"received": 1, "invalid": 0})


def post(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"POST /events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + extra
        + b"content-length: %d\r\n\r\n" % len(body) + body
    )


async def test_malformed_request_line_gets_400_json(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        status, body = status_and_body(await exchange(port, b"GARBAGE\x01 / HTTP/9\r\n\r\n"))
        assert status == 400
        assert body["error"] == "malformed_request"
        await still_serving(port)


async def test_bad_json_gets_400_naming_the_problem(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        status, body = status_and_body(await exchange(port, post(b'{"schema": ')))
        assert status == 400
        assert body["error"] == "bad_json"
        assert "not valid JSON" in str(body["message"])
        await still_serving(port)
    assert read_jsonl(tmp_path / "invalid.jsonl") == []


async def test_oversize_body_gets_413(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        status, body = status_and_body(await exchange(port, post(b"x" * 5000)))
        assert status == 413
        assert body["error"] == "body_too_large"
        # Also when the size is only known while streaming a chunked body.
        chunked = b"POST /events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        chunked += b"".join(b"400\r\n" + b"x" * 1024 + b"\r\n" for _ in range(5))
        status, body = status_and_body(await exchange(port, chunked))
        assert (status, body["error"]) == (413, "body_too_large")
        await still_serving(port)


async def test_gzip_bomb_is_refused_after_decompression(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")
        status, body = status_and_body(await exchange(port, post(bomb, b"content-encoding: gzip\r\n")))
        assert (status, body["error"]) == (413, "body_too_large")
        status, body = status_and_body(await exchange(port, post(b"not gzip", b"content-encoding: gzip\r\n")))
        assert (status, body["error"]) == (400, "bad_encoding")
        await still_serving(port)


async def test_truncated_chunked_body_closes_without_writing(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        raw = b"POST /events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n40\r\n" + EVENT_BYTES[:20]
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            await stream.send(raw)
            await stream.send_eof()
            answer = await read_until_closed(stream, 3)
        assert answer == b""  # the client ended its side mid-body: nothing to answer, the connection closes
        await still_serving(port)
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 1  # only the still_serving event


async def test_slow_client_gets_408_while_others_are_served(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        async with await anyio.connect_tcp("127.0.0.1", port) as slow:
            await slow.send(b"POST /events HTTP/1.1\r\nhost: x\r\n")  # and never finishes the head
            await still_serving(port)
            answer = await read_until_closed(slow, 3)
        assert answer.startswith(b"HTTP/1.1 408")
        async with await anyio.connect_tcp("127.0.0.1", port) as slow_body:
            await slow_body.send(post(EVENT_BYTES)[:-10])  # the body never completes
            answer = await read_until_closed(slow_body, 3)
        assert answer.startswith(b"HTTP/1.1 408")
        await still_serving(port)


async def test_a_trickled_head_gets_408_within_the_header_timeout(tmp_path: Path) -> None:
    received: list[bytes] = []

    async def trickle(stream: SocketStream) -> None:
        try:
            for byte in b"x-slow: " + b"a" * 100:  # 5 s of bytes, 0.05 s apart
                await stream.send(bytes([byte]))
                await anyio.sleep(0.05)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            pass

    async with running(PIPELINE, tmp_path) as p:
        async with await anyio.connect_tcp("127.0.0.1", http_port(p)) as slow:
            await slow.send(b"POST /events HTTP/1.1\r\n")
            with anyio.fail_after(2):  # header_timeout is 0.5 s, counted from the start of the request
                async with anyio.create_task_group() as tg:
                    tg.start_soon(trickle, slow)
                    received.append(await read_until_closed(slow, 2))
                    tg.cancel_scope.cancel()
    assert received[0].startswith(b"HTTP/1.1 408")


async def test_pipelined_requests_are_answered_before_a_malformed_one(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        answer = await exchange(port, post(EVENT_BYTES) + post(EVENT_BYTES) + b"NOT HTTP\r\n\r\n")
        assert re.findall(rb"HTTP/1\.1 (\d{3})", answer) == [b"200", b"200", b"400"]
        assert b"malformed_request" in answer
        await still_serving(port)
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 3


async def test_idle_keep_alive_connection_is_closed(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        async with await anyio.connect_tcp("127.0.0.1", http_port(p)) as stream:
            with anyio.fail_after(3):
                assert await read_until_closed(stream, 3) == b""


async def test_keep_alive_pipelining_chunked_and_gzip_bodies(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        chunked = (
            b"POST /events HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n" % 10 + EVENT_BYTES[:10] + b"\r\n"
            + b"%x\r\n" % (len(EVENT_BYTES) - 10) + EVENT_BYTES[10:] + b"\r\n0\r\n\r\n"
        )
        gzipped = post(gzip.compress(EVENT_BYTES), b"content-encoding: gzip\r\n")
        closing = post(EVENT_BYTES, b"connection: close\r\n")
        answer = await exchange(port, chunked + gzipped + closing)
        assert answer.count(b"HTTP/1.1 200 OK") == 3
        assert answer.rstrip().endswith(b'{"received":1,"invalid":0}')
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 3


async def test_unknown_path_and_wrong_method(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(p)}") as client:
            missing = await client.get("/nope")
            wrong = await client.get("/events")
            health = await client.get("/health")
            ready = await client.get("/ready")
        assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
        assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_items_that_are_not_self_describing_go_to_the_invalid_route(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(p)}/events", json=[EVENT, {"data": 1}, 7])
        assert response.json() == {"received": 3, "invalid": 2}
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["payload"] for e in invalid] == [{"data": 1}, 7]
    assert {e["errors"][0]["keyword"] for e in invalid} == {"self_describing"}


async def test_cookie_and_authorization_are_never_recorded(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        async with httpx.AsyncClient() as client:
            await client.post(
                f"http://127.0.0.1:{http_port(p)}/events",
                json=EVENT,
                headers={"cookie": "sid=secret", "authorization": "Bearer secret", "x-kept": "yes"},
            )
    text = (tmp_path / "valid.jsonl").read_text()
    assert "secret" not in text
    assert read_jsonl(tmp_path / "valid.jsonl")[0]["source"]["headers"]["x-kept"] == "yes"


async def test_a_client_that_never_reads_its_responses_is_dropped(tmp_path: Path) -> None:
    import socket

    # 404s echo their 8 KB path: ~8 MB of responses, more than the kernel buffers of both ends hold.
    count = 1_000
    async with running(PIPELINE, tmp_path) as p:
        port = http_port(p)
        server = p.inputs[0].server
        assert server is not None
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.setblocking(False)
        requests = b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nhost: x\r\n\r\n"
        requests *= count
        try:
            sent = 0
            with anyio.move_on_after(2):  # until the server, blocked on its responses, stops reading
                while sent < len(requests):
                    try:
                        sent += client.send(requests[sent : sent + 65536])
                    except BlockingIOError:
                        await anyio.sleep(0.01)
                    except ConnectionError:  # already dropped, while we were still writing
                        break
            with anyio.fail_after(5):
                while not server._connections and sent == len(requests):  # noqa: ASYNC110 - no event to wait on
                    await anyio.sleep(0.01)
            # The server blocks writing responses nobody reads; past body_timeout (0.5 s) it lets go.
            with anyio.fail_after(5):
                while server._connections:  # noqa: ASYNC110 - polls server internals, which have no event
                    await anyio.sleep(0.05)
            received = b""
            client.setblocking(True)
            client.settimeout(2)
            try:
                while chunk := client.recv(65536):
                    received += chunk
            except (ConnectionError, TimeoutError):
                pass
            assert received.count(b"HTTP/1.1 404") < count, "dropped mid-send, not closed after answering all"
            await still_serving(port)
        finally:
            client.close()


async def test_the_anyio_streams_server_on_either_backend(tmp_path: Path) -> None:
    from streamer.http.server import HttpServer

    spec = PIPELINE.replace("    idle_timeout: 1.0\n", "    idle_timeout: 1.0\n    server: anyio_streams\n")
    async with running(spec, tmp_path) as p:
        assert isinstance(p.inputs[0].server, HttpServer)
        port = http_port(p)
        answer = await exchange(port, post(EVENT_BYTES) + post(EVENT_BYTES) + b"NOT HTTP\r\n\r\n")
        assert re.findall(rb"HTTP/1\.1 (\d{3})", answer) == [b"200", b"200", b"400"]
        await still_serving(port)
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 3


async def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as p:
        async with await anyio.connect_tcp("127.0.0.1", http_port(p)) as stream:
            await stream.send(post(EVENT_BYTES) + post(EVENT_BYTES))
            await stream.send_eof()
            answer = await read_until_closed(stream, 3)
        assert re.findall(rb"HTTP/1\.1 (\d{3})", answer) == [b"200", b"200"]
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 2


async def test_every_address_of_the_host_is_served_on_one_port(tmp_path: Path) -> None:
    import socket

    spec = PIPELINE.replace("    port: 0\n", "    port: 0\n    host: localhost\n")
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)}
    async with running(spec, tmp_path) as p:
        port = http_port(p)
        for address in sorted(addresses):
            async with httpx.AsyncClient() as client:
                host = f"[{address}]" if ":" in address else address
                response = await client.post(f"http://{host}:{port}/events", json=EVENT)
            assert response.status_code == 200, address
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == len(addresses)


UVLOOP = pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")


@pytest.fixture
def loop_installed(anyio_backend: object) -> None:
    """Skip the uvloop case when uvloop is missing, saying how to get it; under CI=true, fail (before the loop
    is made, which would fail with an ImportError)."""
    if isinstance(anyio_backend, tuple) and anyio_backend[1].get("use_uvloop"):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            need_service(False, "uvloop", "it comes with the `fast` extra: pip install -e '.[fast]'")


@pytest.mark.parametrize("anyio_backend", ["asyncio", UVLOOP, "trio"])
@pytest.mark.parametrize("server", ["auto", "anyio_streams"])
async def test_clients_that_connect_together_are_accepted_together_while_the_loop_is_busy(
    tmp_path: Path, server: str, loop_installed: None
) -> None:
    """Every connection waiting is taken when the listener is readable, not one per turn of the loop.

    libuv (uvloop) and anyio's accept take one per turn, and under load a turn lasts as long as the
    requests it answers: a burst of clients waited a turn each before their first request was read.
    Counted in turns of the loop, not seconds: a busy task makes each turn last 5 ms.
    """
    import socket
    import time

    clients_count = 32
    spec = PIPELINE.replace("    idle_timeout: 1.0\n", f"    idle_timeout: 1.0\n    server: {server}\n")
    async with running(spec, tmp_path) as p:
        port = http_port(p)
        turns = 0
        answered_at: list[int] = []

        async def busy() -> None:
            nonlocal turns
            while True:
                time.sleep(0.005)
                turns += 1
                await anyio.lowlevel.checkpoint()

        async def ask(client: socket.socket) -> None:
            client.sendall(b"GET /nowhere HTTP/1.1\r\nhost: x\r\n\r\n")
            client.setblocking(False)
            received = b""
            while b"\r\n\r\n" not in received:
                await anyio.wait_readable(client)
                received += client.recv(65536)
            assert received.startswith(b"HTTP/1.1 404 ")
            answered_at.append(turns)

        # Connected by the kernel into the listener's backlog before the server takes any of them.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(clients_count)]
        try:
            with anyio.fail_after(30):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(busy)
                    async with anyio.create_task_group() as asking:
                        for client in clients:
                            asking.start_soon(ask, client)
                    tasks.cancel_scope.cancel()
        finally:
            for client in clients:
                client.close()
        assert len(answered_at) == clients_count
        # One accept per turn spreads the answers over >= 31 turns; all at once, over a few.
        assert max(answered_at) - min(answered_at) <= 4, answered_at


async def test_the_configured_port_is_the_one_served(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    async with running(PIPELINE.replace("    port: 0\n", f"    port: {port}\n"), tmp_path) as p:
        assert http_port(p) == port
        await still_serving(port)
