"""An HTTP/1.1 server on anyio TCP streams, parsing with httptools: the one for trio.

One task per connection; requests on a connection are answered in order. On
asyncio the HTTP input uses :mod:`streamer.http.asyncio_server` instead, which
keeps this contract without a task per request.
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

import errno
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import httptools
from anyio.abc import SocketAttribute, SocketStream, TaskStatus
from anyio.streams.stapled import MultiListener

from streamer.core.errors import StartupError
from streamer.http.accept import ACCEPT_RETRY_DELAY, accept_waiting
from streamer.http.messages import Request, Response, error_response
from streamer.http.wire import CONTINUE, BadRequest, Limits, RequestParser, encode_response

__all__ = ["App", "HttpServer", "ListenError", "listen"]

log = logging.getLogger("streamer.http")

App = Callable[[Request], Awaitable[Response]]


class ListenError(StartupError):
    """A server cannot listen on its address; ``errno`` says why (``EADDRINUSE``: the port is taken)."""

    def __init__(self, message: str, errno: int | None) -> None:
        super().__init__(message)
        self.errno = errno


_LISTEN_FAILURES = {
    errno.EADDRINUSE: "the port is already in use",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


async def listen(host: str, port: int) -> MultiListener[SocketStream]:
    """anyio's TCP listener on ``host:port``; raises :class:`ListenError` saying why it cannot be had."""
    try:
        return await anyio.create_tcp_listener(local_host=host, local_port=port)
    except OSError as exc:
        why = _LISTEN_FAILURES.get(exc.errno or 0) or exc.strerror or str(exc)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ListenError(f"cannot listen on {address}: {why}", exc.errno) from None


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
        self.on_timeout = on_timeout or limits.timeout_response
        self._connections: set[_Connection] = set()
        self._cancelled = False
        self.tick = limits.tick
        self.bound_port: int | None = None

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await listen(self.host, self.port)
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
        """Take the connections waiting on ``listener`` each time it is readable (see streamer.http.accept)."""
        listening = listener.extra(SocketAttribute.raw_socket)
        while True:
            await anyio.wait_readable(listening)
            accepted, error = accept_waiting(listening)
            for connection in accepted:
                connections.start_soon(self._connection_on, connection)
            if error is not None:
                log.error("accept failed error=%r; accepting again in %.0f s", error, ACCEPT_RETRY_DELAY)
                await anyio.sleep(ACCEPT_RETRY_DELAY)

    async def _connection_on(self, connection: socket.socket) -> None:
        try:
            stream = await SocketStream.from_socket(connection)
        except OSError:  # the client left before its stream was made
            connection.close()
            return
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("making a connection's stream failed")
            connection.close()
            return
        await self._connection(stream)

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
        state = RequestParser(self.limits, client)
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

    async def _exchange(self, stream: SocketStream, state: RequestParser, connection: _Connection) -> None:
        """Answer requests in order until the client or the server ends the connection, or a deadline passes."""
        limits = self.limits
        parser = state.parser
        scope = connection.scope
        stopping = self.stopping
        app = self.app
        monotonic = time.monotonic
        reading_body = False
        refusal: Response | None = None  # for a bad request, sent once the ones before it are answered
        while True:
            if state.done:
                request, keep_alive = state.done.pop(0)
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
                # Decided when answering, as the asyncio server does: a request answered during a drain
                # tells its client not to reuse the connection, which is closed after it.
                keep_alive = keep_alive and not stopping.is_set()
                await stream.send(encode_response(response, keep_alive))
                if not keep_alive:
                    return
                continue
            if refusal is not None:
                await _send_quietly(stream, refusal)
                return
            if state.started:
                if state.continue_due():
                    await stream.send(CONTINUE)
                # A request's head must come within header_timeout of its start, then its body within
                # body_timeout of its first byte: a client trickling bytes does not push its deadline back.
                if connection.phase != _READING:
                    connection.phase = _READING
                    reading_body = state.body_size > 0
                    timeout = limits.body_timeout if reading_body else limits.header_timeout
                    connection.deadline = monotonic() + timeout
                elif state.body_size and not reading_body:
                    reading_body = True
                    connection.deadline = monotonic() + limits.body_timeout
            else:
                if stopping.is_set():
                    return
                connection.phase = _IDLE
                connection.deadline = monotonic() + limits.idle_timeout
            data = await stream.receive(65536)
            if scope.cancel_called:
                # Bytes that arrive just as the deadline passes are dropped: the scope stays cancelled,
                # so handling them could be cut short after their events were submitted.
                return
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade:
                refusal = error_response(400, "upgrade_unsupported", "protocol upgrades are not supported")
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if not isinstance(cause, BadRequest):
                    raise
                refusal = cause.response
            except httptools.HttpParserError as exc:
                refusal = error_response(400, "malformed_request", f"the request is not valid HTTP/1.1: {exc}")


async def _send_quietly(stream: SocketStream, response: Response) -> None:
    try:
        await stream.send(encode_response(response, keep_alive=False))
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        pass
