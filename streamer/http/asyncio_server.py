"""An HTTP/1.1 server on asyncio's transports, parsing with httptools: no task per request.

The contract of :class:`streamer.http.server.HttpServer` (the limits, the timeouts, the drain,
answers in order on each connection), on asyncio only, where a request can be answered from
callbacks: its bytes arrive in ``data_received``, the app answers it at once or later through
``reply`` (called by the sink worker that settles its events), and the response goes to the
transport. Only a request whose handling has to wait for something else (a schema fetch, a full
sink buffer) runs in a task. On anyio streams every read costs a task wake-up and every write
another (anyio's ``send`` is a checkpoint): about as much as the rest of a small request's work.

Flow control: while a request is being answered, further pipelined requests wait, and reading
stops once one is queued; while the transport's write buffer is full, no request is answered.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable

import anyio
import httptools
from anyio.abc import SocketAttribute, TaskGroup, TaskStatus

from streamer.http.accept import ACCEPT_RETRY_DELAY, accept_waiting
from streamer.http.messages import Request, Response, error_response
from streamer.http.server import listen
from streamer.http.wire import CONTINUE, BadRequest, Limits, RequestParser, encode_response

__all__ = ["AsyncioHttpServer", "NowaitApp", "Reply"]

log = logging.getLogger("streamer.http")

Reply = Callable[[Request, Response], None]
NowaitApp = Callable[[Request, Reply], "Response | Awaitable[Response] | None"]
"""Answers a request: with the response at once; with ``None``, calling ``reply(request, response)``
later (quickly, from any task or callback); or with an awaitable of the response, run in a task."""

# What a connection is doing, which decides what a passed deadline means.
_IDLE = 0  # waiting for the next request: close quietly (also closed at once by the drain)
_READING = 1  # in the middle of a request: 408
_HANDLING = 2  # the app has the request: the timeout response (503)
_SENDING = 3  # the client is not taking its responses, or a closed connection is flushing: drop it


class AsyncioHttpServer:
    """Serves ``app`` on ``host:port`` until ``stopping`` is set (see the module docstring).

    Timeouts are deadlines on the connection, checked by one watchdog task every ``tick`` seconds,
    as in :class:`~streamer.http.server.HttpServer`. A request the app has not answered within
    ``limits.handler_timeout`` gets ``on_timeout(request)`` (by default a 503 with ``Retry-After``)
    and the connection is closed; a reply that comes later is dropped.
    """

    def __init__(
        self,
        app: NowaitApp,
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
        self._connections: set[_HttpProtocol] = set()
        self._tasks: TaskGroup | None = None
        self._listening: list[socket.socket] = []
        self._opening: set[asyncio.Task[None]] = set()
        self._retrying: list[asyncio.TimerHandle] = []
        self._drained: anyio.Event | None = None
        self.tick = limits.tick
        self.bound_port: int | None = None

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        loop = asyncio.get_running_loop()
        # anyio binds every address the host resolves to on one port (port 0: the one the first got),
        # as the anyio-streams server does; this server accepts on copies of those sockets itself
        # (streamer.http.accept says why not through loop.create_server).
        listener = await listen(self.host, self.port)
        try:
            self._listening = [one.extra(SocketAttribute.raw_socket).dup() for one in listener.listeners]
            self.bound_port = int(listener.extra(SocketAttribute.local_port))
        finally:
            await listener.aclose()
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                for one in self._listening:
                    one.setblocking(False)
                    loop.add_reader(one, self._accept, loop, one)
                log.info("http listening host=%s port=%d", self.host, self.bound_port)
                task_status.started(self.bound_port)
                watching = anyio.CancelScope()
                tasks.start_soon(self._watch, watching)
                await self.stopping.wait()
                self._stop_accepting(loop)
                self._drained = anyio.Event()
                # Idle connections end now; the others once their requests are answered.
                for connection in list(self._connections):
                    connection.drain()
                if self._connections:
                    await self._drained.wait()
                watching.cancel()
                # Leaving the group waits for handlers still running in tasks (their clients gone).
        finally:
            self._stop_accepting(loop)
            for connection in list(self._connections):  # a kill, or the shutdown deadline, cut the drain short
                connection.abort()

    def _accept(self, loop: asyncio.AbstractEventLoop, listening: socket.socket) -> None:
        """Take the connections waiting on ``listening`` (a reader callback of the loop's)."""
        accepted, error = accept_waiting(listening)
        for connection in accepted:
            opening = loop.create_task(self._open(loop, connection))
            self._opening.add(opening)  # the loop keeps only a weak reference to a task
            opening.add_done_callback(self._opening.discard)
        if error is not None and listening in self._listening:
            log.error("accept failed error=%r; accepting again in %.0f s", error, ACCEPT_RETRY_DELAY)
            loop.remove_reader(listening)
            self._retrying.append(loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting, loop, listening))

    def _resume_accepting(self, loop: asyncio.AbstractEventLoop, listening: socket.socket) -> None:
        if listening in self._listening:
            loop.add_reader(listening, self._accept, loop, listening)

    async def _open(self, loop: asyncio.AbstractEventLoop, connection: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(lambda: _HttpProtocol(self), connection)
        except OSError:  # the client left before its transport was made
            connection.close()
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("making a connection's transport failed")
            connection.close()

    def _stop_accepting(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close the listening sockets (idempotent); connections in the backlog are refused."""
        for retry in self._retrying:
            retry.cancel()
        self._retrying.clear()
        for one in self._listening:
            loop.remove_reader(one)
            one.close()
        self._listening.clear()

    def run(self, connection: _HttpProtocol, request: Request, outcome: Awaitable[Response]) -> None:
        """Answer ``request`` with ``outcome`` once it is awaited, in a task of the server's."""
        assert self._tasks is not None
        self._tasks.start_soon(self._answer_in_task, connection, request, outcome)

    async def _answer_in_task(self, connection: _HttpProtocol, request: Request, outcome: Awaitable[Response]) -> None:
        with anyio.CancelScope() as scope:
            connection.scope = scope
            try:
                response = await outcome
            except Exception:
                log.exception("request handler failed path=%s", request.path)
                response = error_response(500, "internal", "the server failed to handle the request")
        if connection.scope is scope:
            connection.scope = None
        if not scope.cancel_called:
            connection.reply(request, response)

    def opened(self, connection: _HttpProtocol) -> None:
        self._connections.add(connection)

    def closed(self, connection: _HttpProtocol) -> None:
        self._connections.discard(connection)
        if self._drained is not None and not self._connections:
            self._drained.set()

    async def _watch(self, scope: anyio.CancelScope) -> None:
        """Expire every connection whose deadline has passed, every ``tick`` seconds."""
        connections = self._connections
        with scope:
            while True:
                await anyio.sleep(self.tick)
                now = time.monotonic()
                expired = [c for c in connections if c.deadline <= now]
                for connection in expired:
                    connection.deadline = math.inf
                    connection.expire()


class _HttpProtocol(asyncio.Protocol):
    """One connection: parses requests and answers them in order."""

    __slots__ = (
        "closed", "deadline", "eof", "keep_alive", "limits", "parser", "paused_reading", "paused_writing",
        "phase", "reading_body", "refusal", "reply", "request", "scope", "server", "transport",
    )  # fmt: skip

    transport: asyncio.Transport
    parser: RequestParser
    """Both set by connection_made, before any other callback."""

    def __init__(self, server: AsyncioHttpServer) -> None:
        self.server = server
        self.limits = server.limits
        self.phase = _IDLE
        self.reading_body = False
        self.deadline = math.inf
        """``time.monotonic()`` after which the watchdog calls :meth:`expire`."""
        self.request: Request | None = None
        """The request the app has, not answered yet."""
        self.keep_alive = True
        self.scope: anyio.CancelScope | None = None
        """Of the task answering ``request``, when it needed one."""
        self.refusal: Response | None = None
        """The error response owed once the requests before the bad one are answered."""
        self.closed = False
        self.eof = False
        self.paused_reading = False
        self.paused_writing = False
        self.reply: Reply = self._reply  # bound once, handed to the app with every request

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream server's are Transports
        peer = transport.get_extra_info("peername")
        client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), 0)
        self.parser = RequestParser(self.limits, client)
        self.server.opened(self)
        self.deadline = time.monotonic() + self.limits.idle_timeout
        if self.server.stopping.is_set():  # accepted just as the drain began
            self._close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.request = None  # a reply still to come is dropped
        self.server.closed(self)

    def eof_received(self) -> bool:
        self.eof = True
        if self.request is None and not self.parser.done:
            self.closed = True
            return False  # nothing to answer: the transport closes itself
        return True  # answer what came, then close (see _next)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.phase == _SENDING and not self.closed:
            self._next()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.refusal is not None:
            return
        state = self.parser
        try:
            state.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(error_response(400, "upgrade_unsupported", "protocol upgrades are not supported"))
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, BadRequest):
                self._refuse(cause.response)
            else:  # a bug in a callback: this connection ends, the server goes on
                log.error("request parsing failed", exc_info=cause or exc)
                self.abort()
            return
        except httptools.HttpParserError as exc:
            self._refuse(error_response(400, "malformed_request", f"the request is not valid HTTP/1.1: {exc}"))
            return
        if self.phase <= _READING:  # idle or reading: nothing in hand
            self._next()
        elif state.done and not self.paused_reading:  # pipelined: it waits for the request in hand
            self.transport.pause_reading()
            self.paused_reading = True

    # Answering

    def _next(self) -> None:
        """Answer the complete requests waiting, in order, as far as it goes; then wait for more."""
        state = self.parser
        server = self.server
        while state.done and not self.closed:
            if self.paused_writing:
                self.phase = _SENDING  # resume_writing comes back here
                self.deadline = time.monotonic() + self.limits.body_timeout
                return
            request, keep_alive = state.done.pop(0)
            self.keep_alive = keep_alive
            self.request = request
            self.phase = _HANDLING
            self.deadline = time.monotonic() + self.limits.handler_timeout
            try:
                outcome = server.app(request, self.reply)
            except Exception:
                log.exception("request handler failed path=%s", request.path)
                outcome = error_response(500, "internal", "the server failed to handle the request")
            if outcome is None:
                return  # _reply comes later
            if not isinstance(outcome, Response):
                server.run(self, request, outcome)
                return
            if not self._write(outcome):
                return
        if self.closed:
            return
        if self.refusal is not None:
            self._send_and_close(self.refusal)
            return
        if self.paused_reading:
            self.paused_reading = False
            self.transport.resume_reading()
        if state.started:
            if state.continue_due():
                self.transport.write(CONTINUE)
            # A request's head must come within header_timeout of its start, then its body within
            # body_timeout of its first byte: a client trickling bytes does not push its deadline back.
            if self.phase != _READING:
                self.phase = _READING
                self.reading_body = state.body_size > 0
                timeout = self.limits.body_timeout if self.reading_body else self.limits.header_timeout
                self.deadline = time.monotonic() + timeout
            elif state.body_size and not self.reading_body:
                self.reading_body = True
                self.deadline = time.monotonic() + self.limits.body_timeout
        elif self.eof or server.stopping.is_set():
            self._close()
        elif self.phase != _IDLE:
            self.phase = _IDLE
            self.deadline = time.monotonic() + self.limits.idle_timeout

    def _reply(self, request: Request, response: Response) -> None:
        if request is not self.request or self.closed:
            return  # timed out, or the client left: nobody to tell
        try:
            if self._write(response):
                self._next()
        except Exception:  # called by whoever settled the events: never let it fail them
            log.exception("answering failed path=%s", request.path)
            self.abort()

    def _write(self, response: Response) -> bool:
        """Send the response to the request in hand; whether the connection stays open."""
        self.request = None
        # A client that has half-closed gets the answers to every request it sent, the last one closing.
        last = self.eof and not self.parser.done
        keep_alive = self.keep_alive and not last and not self.server.stopping.is_set()
        self.transport.write(encode_response(response, keep_alive))
        if not keep_alive:
            self._close()
        return keep_alive

    def _refuse(self, response: Response) -> None:
        """Send ``response`` and close, after answering the requests that came before the bad one."""
        self.refusal = response
        if not self.paused_reading:
            self.paused_reading = True
            self.transport.pause_reading()
        if self.request is None:
            self._next()

    def _send_and_close(self, response: Response) -> None:
        self.request = None
        self.transport.write(encode_response(response, keep_alive=False))
        self._close()

    def _close(self) -> None:
        """Close once the responses written are flushed; a client that does not take them is dropped."""
        if self.closed:
            return
        self.closed = True
        self.phase = _SENDING
        self.deadline = time.monotonic() + self.limits.body_timeout
        self.transport.close()

    # Called by the server

    def drain(self) -> None:
        """The server is stopping: end the connection now if it is between requests."""
        state = self.parser
        if self.request is None and self.phase == _IDLE and not state.done and not state.started:
            self._close()

    def expire(self) -> None:
        """The deadline of the current phase has passed."""
        phase = self.phase
        if phase == _HANDLING and self.request is not None:
            request = self.request
            if self.scope is not None:
                self.scope.cancel()
            self._send_and_close(self.server.on_timeout(request))
        elif phase == _READING:
            self._send_and_close(error_response(408, "request_timeout", "the request was not received in time"))
        elif phase == _SENDING:
            self.abort()
        else:
            self._close()

    def abort(self) -> None:
        self.closed = True
        self.request = None
        if self.scope is not None:
            self.scope.cancel()
        self.transport.abort()
