"""An HTTP/1.1 server on anyio TCP streams, parsing with httptools.

One task per connection; requests on a connection are answered in order.
Limits protect the process from bad clients: header size, body size (413, also
after gzip decompression), time to send headers, time to send the body, and
idle time between keep-alive requests; and clients from a stuck handler: one
that takes longer than ``handler_timeout`` is cancelled and answered 503 with
``Retry-After``. A malformed request gets a 400 with a
JSON body naming the problem and the connection is closed; no client can take
the server down.

Draining: :meth:`HttpServer.serve` returns after ``stopping`` is set, the
listeners are closed, idle connections are closed, and every request in
progress has been answered.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
import httptools
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

from streamer.http.messages import Request, Response, error_response

__all__ = ["App", "HttpServer", "Limits", "encode_response", "timeout_response"]

log = logging.getLogger("streamer.http")

App = Callable[[Request], Awaitable[Response]]

@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 65_536
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    handler_timeout: float = math.inf
    """Seconds the app may take to answer a request before the client gets the timeout response."""
    retry_after: int = 1
    """``Retry-After`` seconds advised by the default timeout response."""


_HEADER_NAMES: dict[bytes, str] = {}  # header names as sent -> lower-cased str, filled as they are seen
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}


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
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < 512:  # bounded: names are chosen by clients
                _HEADER_NAMES[name] = key
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
        url = self.url
        if url[:1] == b"/" and b"?" not in url and b"#" not in url:
            path, query = url.decode("latin-1"), ""  # a plain path: what parse_url would return
        else:
            parsed = httptools.parse_url(url)
            path = parsed.path.decode("latin-1")
            query = parsed.query.decode("latin-1") if parsed.query else ""
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        encoding = self.headers.get("content-encoding")
        if encoding is not None and body:
            body = _decompress(encoding, body, self.limits)
        method = self.parser.get_method()
        request = Request(
            _METHODS.get(method) or method.decode("ascii"), path, query, self.headers, body, self.client
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


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
# Header lines most responses carry, encoded once.
_HEADER_LINES = {
    ("content-type", "application/json"): b"content-type: application/json\r\n",
    ("content-type", "image/gif"): b"content-type: image/gif\r\n",
    ("cache-control", "no-cache, no-store, must-revalidate"): b"cache-control: no-cache, no-store, must-revalidate\r\n",
}


def encode_response(response: Response, keep_alive: bool) -> bytes:
    status = response.status
    head = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    parts = [head]
    for header in response.headers:
        line = _HEADER_LINES.get(header)
        parts.append(line if line is not None else f"{header[0]}: {header[1]}\r\n".encode("latin-1"))
    body = response.body
    if keep_alive:
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
    else:
        parts.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    parts.append(body)
    return b"".join(parts)


class _Connection:
    """What the deadline watchdog needs to know about one connection."""

    __slots__ = ("deadline", "phase", "request", "scope")

    def __init__(self, scope: anyio.CancelScope) -> None:
        self.scope = scope
        self.phase = _IDLE
        self.deadline = math.inf
        """``time.monotonic()`` after which the watchdog cancels ``scope``."""
        self.request: Request | None = None
        """The request being handled (phase ``_HANDLING``), for the timeout response."""


# What a connection is doing, which decides what a passed deadline means.
_IDLE = 0  # waiting for the next request: close quietly (also closed at once by the drain)
_READING = 1  # in the middle of a request: 408
_HANDLING = 2  # running the app: the timeout response (503)
_SENDING = 3  # writing the response: a client that does not read it is dropped (body timeout)


class HttpServer:
    """Serves ``app`` on ``host:port`` until ``stopping`` is set.

    Timeouts (header, body, idle, handler, and sending: a client must take its response within the
    body timeout) are deadlines on the connection, checked by one watchdog
    task every ``tick`` seconds (an eighth of the shortest timeout, at most one second), which cancels
    the connection's scope once its deadline has passed. Arming a timer per read and per request costs
    more than the rest of the server's work for a small request; a deadline here is a float.

    A handler running longer than ``limits.handler_timeout`` is cancelled and the client gets
    ``on_timeout(request)`` (by default a 503 with ``Retry-After: limits.retry_after``), and the
    connection is closed.
    """

    def __init__(
        self,
        app: App,
        host: str,
        port: int,
        limits: Limits,
        stopping: anyio.Event,
        on_timeout: Callable[[Request], Response] | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.limits = limits
        self.stopping = stopping
        self.on_timeout = on_timeout or self._timeout_response
        self._connections: set[_Connection] = set()
        self._cancelled = False
        shortest = min(limits.header_timeout, limits.body_timeout, limits.idle_timeout, limits.handler_timeout)
        self.tick = min(max(shortest / 8, 0.005), 1.0)
        self.bound_port: int | None = None

    def _timeout_response(self, request: Request) -> Response:
        return timeout_response(self.limits.handler_timeout, self.limits.retry_after)

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        self.bound_port = int(listener.extra(SocketAttribute.local_port))
        log.info("http listening host=%s port=%d", self.host, self.bound_port)
        task_status.started(self.bound_port)
        try:
            async with anyio.create_task_group() as watching:
                watching.start_soon(self._watch)
                async with anyio.create_task_group() as connections:
                    with anyio.CancelScope() as accepting:
                        async with anyio.create_task_group() as acceptors:
                            for one in listener.listeners:
                                acceptors.start_soon(self._accept, one, connections)
                            await self.stopping.wait()
                            accepting.cancel()
                    await listener.aclose()
                    # Connections waiting for a request end now; the others once their request is answered.
                    for connection in self._connections:
                        if connection.phase == _IDLE:
                            connection.scope.cancel()
                watching.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()  # again, in case a kill cut the drain short (closing twice is fine)

    async def _watch(self) -> None:
        """Cancel every connection whose deadline has passed, every ``tick`` seconds."""
        connections = self._connections
        try:
            while True:
                await anyio.sleep(self.tick)
                now = time.monotonic()
                for connection in connections:  # no await in the loop: the set cannot change meanwhile
                    if connection.deadline <= now:
                        connection.deadline = math.inf
                        connection.scope.cancel()
        finally:
            # Connection scopes are shielded from the scopes around the server (see _converse); when
            # those are cancelled (a kill, the shutdown deadline), so is this task: end every connection.
            self._cancelled = True
            for connection in connections:
                connection.scope.cancel()

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
        # Shielded so that anyio's checkpoint before each send stops here instead of walking every scope
        # of the pipeline (~5 us per request); the watchdog carries a cancellation of the server into it.
        with anyio.CancelScope(shield=True) as scope:
            if self._cancelled:
                return
            connection = _Connection(scope)
            self._connections.add(connection)
            try:
                await self._exchange(stream, state, connection)
            finally:
                self._connections.discard(connection)
        if not scope.cancel_called:
            return
        # A deadline passed, or the drain ended an idle wait.
        if connection.phase == _HANDLING and connection.request is not None:
            await _send_quietly(stream, self.on_timeout(connection.request))
        elif connection.phase == _READING and state.started:
            await _send_quietly(stream, error_response(408, "request_timeout", "the request was not received in time"))

    async def _exchange(self, stream: SocketStream, state: _Parser, connection: _Connection) -> None:
        """Answer requests in order until the client or the server ends the connection, or a deadline passes."""
        limits = self.limits
        parser = state.parser
        scope = connection.scope
        stopping = self.stopping
        app = self.app
        monotonic = time.monotonic
        while True:
            if state.done:
                request, keep_alive = state.done.pop(0)
                keep_alive = keep_alive and not stopping.is_set()
                connection.phase = _HANDLING
                connection.request = request
                connection.deadline = monotonic() + limits.handler_timeout
                try:
                    response = await app(request)
                except Exception:
                    log.exception("request handler failed path=%s", request.path)
                    response = error_response(500, "internal", "the server failed to handle the request")
                if scope.cancel_called:
                    return  # too late: the client gets the timeout response instead
                connection.phase = _SENDING
                connection.request = None
                # A client that stops reading would otherwise hold this task and its socket forever.
                connection.deadline = monotonic() + limits.body_timeout
                await stream.send(encode_response(response, keep_alive))
                if not keep_alive:
                    return
                continue
            if state.started:
                connection.phase = _READING
                timeout = limits.body_timeout if state.url else limits.header_timeout
            else:
                if stopping.is_set():
                    return
                connection.phase = _IDLE
                timeout = limits.idle_timeout
            connection.deadline = monotonic() + timeout
            data = await stream.receive(65536)
            if scope.cancel_called:
                # Bytes that arrive just as the deadline passes are dropped: the scope stays cancelled,
                # so handling them could be cut short after their events were submitted.
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


def timeout_response(timeout: float, retry_after: int) -> Response:
    """503 for a request not handled within ``timeout`` seconds, advising a retry after ``retry_after``."""
    return error_response(
        503,
        "timeout",
        f"the request was not handled within {timeout:g}s; retry later",
        headers=[("retry-after", str(retry_after))],
    )


async def _send_quietly(stream: SocketStream, response: Response) -> None:
    try:
        await stream.send(encode_response(response, keep_alive=False))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        pass
