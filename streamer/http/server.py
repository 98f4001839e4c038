"""An HTTP/1.1 server on anyio TCP streams, parsing with httptools.

One task per connection; requests on a connection are answered in order.
Limits protect the process from bad clients: header size, body size (413, also
after gzip decompression), time to send headers, time to send the body, and
idle time between keep-alive requests. A malformed request gets a 400 with a
JSON body naming the problem and the connection is closed; no client can take
the server down.

Draining: :meth:`HttpServer.serve` returns after ``stopping`` is set, the
listeners are closed, idle connections are closed, and every request in
progress has been answered.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
import httptools
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from streamer.http.messages import Request, Response, error_response

__all__ = ["App", "HttpServer", "Limits"]

log = logging.getLogger("streamer.http")

App = Callable[[Request], Awaitable[Response]]

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 65_536
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0


class _BadRequest(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


class _Parser:
    """httptools callbacks collecting complete requests (pipelined ones queue up)."""

    __slots__ = (
        "body",
        "body_size",
        "client",
        "done",
        "header_bytes",
        "headers",
        "limits",
        "parser",
        "started",
        "url",
    )

    def __init__(self, limits: Limits, client: tuple[str, int]) -> None:
        self.limits = limits
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[Request, bool]] = []
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.started = False

    def on_message_begin(self) -> None:
        self.started = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_header_bytes:
            raise _BadRequest(error_response(414, "uri_too_long", "the request URL is too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.limits.max_header_bytes:
            raise _BadRequest(error_response(431, "headers_too_large", "the request headers are too large"))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        if previous is None:
            self.headers[key] = text
        else:
            self.headers[key] = previous + ("; " if key == "cookie" else ", ") + text

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise _BadRequest(_too_large(self.limits))

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.limits.max_body_bytes:
            raise _BadRequest(_too_large(self.limits))
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        parsed = httptools.parse_url(self.url)
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        encoding = self.headers.get("content-encoding")
        if encoding is not None and body:
            body = _decompress(encoding, body, self.limits)
        request = Request(
            self.parser.get_method().decode("ascii"),
            parsed.path.decode("latin-1"),
            parsed.query.decode("latin-1") if parsed.query else "",
            self.headers,
            body,
            self.client,
        )
        self.done.append((request, self.parser.should_keep_alive()))
        self._reset()


def _too_large(limits: Limits) -> Response:
    return error_response(
        413, "body_too_large", f"the request body is larger than {limits.max_body_bytes} bytes"
    )


def _decompress(encoding: str, body: bytes, limits: Limits) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise _BadRequest(
            error_response(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip")
        )
    wbits = 47 if encoding != "deflate" else 15  # 32+15: gzip or zlib header, detected
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, limits.max_body_bytes + 1)
    except zlib.error as exc:
        raise _BadRequest(error_response(400, "bad_encoding", f"the {encoding} body is corrupt: {exc}")) from None
    if len(out) > limits.max_body_bytes or decoder.unconsumed_tail:
        raise _BadRequest(_too_large(limits))
    if not decoder.eof:
        raise _BadRequest(error_response(400, "bad_encoding", f"the {encoding} body is truncated"))
    return out


def encode_response(response: Response, keep_alive: bool) -> bytes:
    status = response.status
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    for name, value in response.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"content-length: %d\r\n" % len(response.body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(response.body)
    return b"".join(parts)


class HttpServer:
    """Serves ``app`` on ``host:port`` until ``stopping`` is set."""

    def __init__(self, app: App, host: str, port: int, limits: Limits, stopping: anyio.Event) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits
        self.stopping = stopping
        self._idle: set[anyio.CancelScope] = set()
        self.bound_port: int | None = None

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.bound_port = int(listener.extra(SocketAttribute.local_port))
        log.info("http listening host=%s port=%d", self.host, self.bound_port)
        task_status.started(self.bound_port)
        async with anyio.create_task_group() as connections:
            with anyio.CancelScope() as accepting:
                async with anyio.create_task_group() as acceptors:
                    for one in listener.listeners:
                        acceptors.start_soon(self._accept, one, connections)
                    await self.stopping.wait()
                    accepting.cancel()
            await listener.aclose()
            for scope in list(self._idle):
                scope.cancel()

    async def _accept(self, listener: Any, connections: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.error("accept failed error=%r", exc)
                await anyio.sleep(0.1)
                continue
            connections.start_soon(self._connection, stream)

    async def _connection(self, stream: SocketStream) -> None:
        try:
            client = stream.extra(SocketAttribute.remote_address)
            if not isinstance(client, tuple):
                client = (str(client), 0)
            await self._converse(stream, (str(client[0]), int(client[1])))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
            pass
        except Exception:  # a bug in one exchange must not take the server down
            log.exception("connection failed")
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _converse(self, stream: SocketStream, client: tuple[str, int]) -> None:
        state = _Parser(self.limits, client)
        # One cancel scope per connection, its deadline moved around each read: entering a fresh
        # move_on_after for every read costs several times more, once per request.
        with anyio.CancelScope() as timer:
            await self._exchange(stream, state, timer)
        # The timer fired while waiting for the client, or the drain ended an idle wait.
        if timer.cancel_called and state.started:
            await _send_quietly(stream, error_response(408, "request_timeout", "the request was not received in time"))

    async def _exchange(self, stream: SocketStream, state: _Parser, timer: anyio.CancelScope) -> None:
        """Answer requests in order until the client or the server ends the connection, or a read times out."""
        limits = self.limits
        parser = state.parser
        while True:
            if state.done:
                request, keep_alive = state.done.pop(0)
                keep_alive = keep_alive and not self.stopping.is_set()
                try:
                    response = await self.app(request)
                except Exception:
                    log.exception("request handler failed path=%s", request.path)
                    response = error_response(500, "internal", "the server failed to handle the request")
                await stream.send(encode_response(response, keep_alive))
                if not keep_alive:
                    return
                continue
            if state.started:
                timeout = limits.body_timeout if state.url else limits.header_timeout
            else:
                if self.stopping.is_set():
                    return
                timeout = limits.idle_timeout
            data = await self._receive(stream, timer, timeout, idle=not state.started)
            if data is None:
                return
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                await _send_quietly(
                    stream, error_response(400, "upgrade_unsupported", "protocol upgrades are not supported")
                )
                return
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, _BadRequest):
                    await _send_quietly(stream, cause.response)
                    return
                raise
            except httptools.HttpParserError as exc:
                await _send_quietly(
                    stream, error_response(400, "malformed_request", f"the request is not valid HTTP/1.1: {exc}")
                )
                return

    async def _receive(
        self, stream: SocketStream, timer: anyio.CancelScope, timeout: float, *, idle: bool
    ) -> bytes | None:
        """Next bytes from the client; on timeout or, while idle, on drain, ``timer`` is cancelled.

        Bytes that arrive just as ``timer`` fires are dropped (``None``): the scope stays cancelled, so
        handling them could be cut short after their events were submitted.
        """
        timer.deadline = anyio.current_time() + timeout
        if idle:
            self._idle.add(timer)
        try:
            data = await stream.receive(65536)
        finally:
            timer.deadline = math.inf
            if idle:
                self._idle.discard(timer)
        return None if timer.cancel_called else data


async def _send_quietly(stream: SocketStream, response: Response) -> None:
    try:
        await stream.send(encode_response(response, keep_alive=False))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        pass
