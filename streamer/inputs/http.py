"""HTTP input: the collector endpoint.

Serves the routes its config lists (each a protocol connector from
``streamer/protocols``) plus ``GET /health`` (liveness: 200 while the process
runs) and ``GET /ready`` (200 once every sink is open, 503 before and during
drain). A request is answered only after every required sink holds its events;
if that takes longer than ``request_timeout`` the client gets 503 with
``Retry-After``, and a failed required sink gives 500.

Example::

    inputs:
      web:
        type: http
        host: 0.0.0.0
        port: 8080
        routes:
          - type: self_describing
            path: /events
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable
from typing import Annotated, Any, ClassVar, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus

from streamer.core.components import Context, Input, InputSpec, Submit
from streamer.core.delivery import Delivery, DeliveryFailed
from streamer.core.envelope import Source
from streamer.http.asyncio_server import AsyncioHttpServer, Reply
from streamer.http.client_ip import ClientIpResolver, ClientIpSpec
from streamer.http.cookie import NETWORK_USER_ID, CookieSpec, IdentityCookie
from streamer.http.cors import Cors, CorsSpec
from streamer.http.messages import Request, Response, error_response, json_response
from streamer.http.ratelimit import RateLimiter, RateLimitSpec
from streamer.http.routes import Accepted, Handler, Ingest, Route
from streamer.http.server import HttpServer, ListenError
from streamer.http.wire import Limits

__all__ = ["HttpInput", "HttpInputSpec"]

log = logging.getLogger("streamer.http")

_ALWAYS_DROPPED = frozenset({"cookie", "authorization", "proxy-authorization"})
_UNLIMITED = frozenset({"/health", "/ready"})


class HttpInputSpec(InputSpec, tag="http", kw_only=True):
    """An HTTP/1.1 collector endpoint."""

    __nested__: ClassVar[dict[str, str]] = {"routes": "route"}

    host: Annotated[str, msgspec.Meta(description="Address to listen on.", examples=["0.0.0.0"])] = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535, description="TCP port; 0 picks a free one.")] = 8080
    routes: Annotated[
        list[dict[str, Any]],
        msgspec.Meta(description="Protocols served, each with its paths."),
    ] = msgspec.field(default_factory=lambda: [{"type": "self_describing"}])
    request_timeout: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a request may take, mostly waiting for its events to be written, before the "
            "client gets 503 with Retry-After (and the connection is closed).",
        ),
    ] = 10.0
    retry_after: Annotated[
        int, msgspec.Meta(ge=0, description="Seconds advised in the Retry-After header of a 503.")
    ] = 1
    max_body_bytes: Annotated[
        int, msgspec.Meta(ge=1, description="Largest request body accepted, after decompression (else 413).")
    ] = 1_048_576
    max_header_bytes: Annotated[int, msgspec.Meta(ge=256, description="Largest request head accepted.")] = 65_536
    header_timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds a client has to send the request head.")
    ] = 10.0
    body_timeout: Annotated[
        float,
        msgspec.Meta(gt=0, description="Seconds a client has to send a body, and to take a response it is sent."),
    ] = 30.0
    idle_timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds a keep-alive connection may sit idle.")
    ] = 60.0
    cors: Annotated[
        CorsSpec | None,
        msgspec.Meta(description="Answer CORS preflights and allow browser pages on these origins to send events."),
    ] = None
    cookie: Annotated[
        CookieSpec | None,
        msgspec.Meta(description="Set an identity cookie; its value is recorded as source.metadata.network_user_id."),
    ] = None
    keep_headers: Annotated[
        bool, msgspec.Meta(description="Record request headers in the envelope's source.")
    ] = True
    drop_headers: Annotated[
        list[str],
        msgspec.Meta(
            description="Headers never recorded, besides Cookie and Authorization, which are always dropped.",
            examples=[["x-api-key"]],
        ),
    ] = msgspec.field(default_factory=list)
    client_ip: Annotated[
        ClientIpSpec,
        msgspec.Meta(description="Which proxies may tell the client address (X-Forwarded-For, Forwarded)."),
    ] = msgspec.field(default_factory=ClientIpSpec)
    server: Annotated[
        Literal["auto", "anyio_streams"],
        msgspec.Meta(
            description="`auto`: on asyncio, asyncio's transports, answering from callbacks with no task per "
            "request (about 1.5 times the requests per core); on trio, anyio streams. `anyio_streams`: anyio "
            "streams with a task per connection on both backends. Limits, timeouts and answers are the same."
        ),
    ] = "auto"
    rate_limit: Annotated[
        RateLimitSpec,
        msgspec.Meta(description="Per-client and global request rate limits (429 with Retry-After when exceeded)."),
    ] = msgspec.field(default_factory=RateLimitSpec)


class HttpInput(Input, Ingest):
    Spec = HttpInputSpec
    spec: HttpInputSpec

    def __init__(
        self, name: str, spec: HttpInputSpec, context: Context, children: dict[str, list[Any]] | None = None
    ) -> None:
        super().__init__(name, spec, context)
        self.input_name = name
        self._drop = _ALWAYS_DROPPED | {h.lower() for h in spec.drop_headers}
        self._cors = Cors(spec.cors) if spec.cors is not None else None
        self._cookie = IdentityCookie(spec.cookie) if spec.cookie is not None else None
        self._client_ip = ClientIpResolver(spec.client_ip)
        self._limiter = RateLimiter(spec.rate_limit)
        self._plain = self._cors is None and self._cookie is None  # no CORS or cookie headers to add
        self._exact: dict[str, dict[str, Handler]] = {}
        self._prefixes: list[tuple[str, dict[str, Handler]]] = []
        self._add("GET", "/health", self._health)
        self._add("GET", "/ready", self._ready)
        routes: list[Route] = (children or {}).get("routes", [])
        for route in routes:
            for method, path, handler in route.endpoints():
                self._add(method, path, handler)
        self._submit: Submit  # set by run()
        self.server: HttpServer | AsyncioHttpServer | None = None

    def _add(self, method: str, path: str, handler: Handler) -> None:
        if path.endswith("/*"):
            prefix = path[:-1]
            for known, methods in self._prefixes:
                if known == prefix:
                    methods[method] = handler
                    return
            self._prefixes.append((prefix, {method: handler}))
            self._prefixes.sort(key=lambda p: -len(p[0]))
        else:
            self._exact.setdefault(path, {})[method] = handler

    async def run(self, submit: Submit, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self._submit = submit
        spec = self.spec
        limits = Limits(
            max_body_bytes=spec.max_body_bytes,
            max_header_bytes=spec.max_header_bytes,
            header_timeout=spec.header_timeout,
            body_timeout=spec.body_timeout,
            idle_timeout=spec.idle_timeout,
            handler_timeout=spec.request_timeout,
            retry_after=spec.retry_after,
        )
        if self.context.backend == "asyncio" and spec.server == "auto":
            self.server = AsyncioHttpServer(
                self.answer_nowait, spec.host, spec.port, limits, self.context.stopping, on_timeout=self._timed_out
            )
        else:
            self.server = HttpServer(
                self.answer, spec.host, spec.port, limits, self.context.stopping, on_timeout=self._timed_out
            )
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self.server.serve)
                task_status.started()
        except* ListenError as group:
            raise self._cannot_listen(group.exceptions[0]) from None

    def _cannot_listen(self, exc: BaseException) -> ListenError:
        """The server's refusal with the input's name and how to choose another port."""
        assert isinstance(exc, ListenError)
        message = f"input {self.name}: {exc}"
        if exc.errno == errno.EADDRINUSE:
            message += (
                "; choose another with port: (the example pipelines read STREAMER_PORT, "
                "e.g. STREAMER_PORT=8081 streamer run pipelines/quickstart.yml)"
            )
        return ListenError(message, exc.errno)

    def _route(self, request: Request) -> Response | Accepted | Awaitable[Response]:
        """What the request gets before any delivery: a refusal, a preflight, or its handler's outcome."""
        if self._limiter.enabled and request.path not in _UNLIMITED:
            limited = self._rate_limited(request)
            if limited is not None:
                if self._cors is not None:
                    self._cors.decorate(request, limited)  # so a browser page can read the 429
                return limited
        methods = self._exact.get(request.path)
        if methods is None:
            for prefix, candidates in self._prefixes:
                if request.path.startswith(prefix):
                    methods = candidates
                    break
            else:
                return error_response(404, "not_found", f"no route for {request.path}")
        handler = methods.get(request.method)
        if handler is None:
            if request.method == "OPTIONS" and self._cors is not None:
                return self._cors.preflight(request, methods)
            allowed = ", ".join(sorted(methods))
            return error_response(
                405, "method_not_allowed", f"{request.method} is not allowed on {request.path}; use {allowed}",
            )
        if self._plain:
            return handler(request, self)
        if self._cookie is not None and request.path not in _UNLIMITED:
            self._cookie.ensure(request)  # before the handler, which records the id in the source
        outcome = handler(request, self)
        return self._for_browsers(request, outcome) if isinstance(outcome, Response) else outcome

    def _for_browsers(self, request: Request, response: Response) -> Response:
        """Add the CORS and Set-Cookie headers to a handler's response."""
        if self._plain:
            return response
        if self._cors is not None:
            self._cors.decorate(request, response)
        if self._cookie is not None and request.path not in _UNLIMITED:
            set_cookie = self._cookie.ensure(request)  # reads back the id given before the handler ran
            if set_cookie is not None:
                IdentityCookie.set(response, set_cookie)
        return response

    def _delivered(self, request: Request, accepted: Accepted, delivery: Delivery) -> Response:
        """The answer to accepted events once their delivery is done."""
        if delivery.failure is not None:
            return error_response(500, "sink_failed", str(delivery.failure))
        response = accepted.respond(accepted.envelopes)
        return response if self._plain else self._for_browsers(request, response)

    async def answer(self, request: Request) -> Response:
        """The response to a request, once every required sink holds its events (for task-based servers)."""
        outcome = self._route(request)
        if isinstance(outcome, Response):
            return outcome
        if isinstance(outcome, Accepted):
            return await self._deliver(request, outcome, self._submit(outcome.envelopes))
        return self._for_browsers(request, await outcome)

    def answer_nowait(self, request: Request, reply: Reply) -> Response | Awaitable[Response] | None:
        """:meth:`answer` without a task when it can be had (for callback-based servers).

        The response, when it is known at once; ``None`` when ``reply(request, response)`` will be
        called once the sinks hold the events (from the sink worker that settles them); or an
        awaitable giving the response, when something has to wait (a schema fetch, a full buffer).
        """
        outcome = self._route(request)
        if isinstance(outcome, Response):
            return outcome
        if isinstance(outcome, Accepted):
            submitted = self._submit.nowait(outcome.envelopes)
            if not isinstance(submitted, Delivery):
                return self._deliver(request, outcome, submitted)
            if submitted.done:
                return self._delivered(request, outcome, submitted)
            submitted.on_done(functools.partial(self._reply, request, outcome, reply))
            return None
        return self._after(request, outcome)

    def _reply(self, request: Request, accepted: Accepted, reply: Reply, delivery: Delivery) -> None:
        try:
            response = self._delivered(request, accepted, delivery)
        except Exception:  # runs in the sink worker that settled the events: it must not fail there
            log.exception("answering failed path=%s", request.path)
            response = error_response(500, "internal", "the server failed to handle the request")
        reply(request, response)

    async def _deliver(self, request: Request, accepted: Accepted, submitted: Awaitable[Delivery]) -> Response:
        # No timer here: the server cancels a handler that runs past request_timeout and answers
        # _timed_out(request) (a cancel scope per request cost more than the rest of this method).
        delivery = await submitted
        try:
            await delivery.wait()
        except DeliveryFailed:
            pass  # _delivered answers 500
        return self._delivered(request, accepted, delivery)

    async def _after(self, request: Request, outcome: Awaitable[Response]) -> Response:
        return self._for_browsers(request, await outcome)

    def _timed_out(self, request: Request) -> Response:
        """The answer to a request whose handler the server cancelled after ``request_timeout``."""
        response = error_response(
            503,
            "timeout",
            f"the events were not written within {self.spec.request_timeout}s; retry later",
            headers=[("retry-after", str(self.spec.retry_after))],
        )
        if self._cookie is not None and request.path not in _UNLIMITED:
            # The id was minted before the handler ran (_for_browsers), so this only reads it back.
            set_cookie = self._cookie.ensure(request)
            if set_cookie is not None:
                IdentityCookie.set(response, set_cookie)
        if self._cors is not None:
            self._cors.decorate(request, response)
        return response

    def _identity(self, request: Request) -> dict[str, Any] | None:
        value = self._cookie.read(request) if self._cookie is not None else None
        return None if value is None else {NETWORK_USER_ID: value}

    def _rate_limited(self, request: Request) -> Response | None:
        client = self._client_ip.resolve(request.client[0], request.headers) if self._limiter.per_ip_enabled else None
        retry_after, shared = self._limiter.check(client)
        if not retry_after:
            return None
        who = "this collector is receiving" if shared else "this client address is sending"
        return error_response(
            429, "rate_limited", f"{who} too many requests; retry after {retry_after}s",
            headers=[("retry-after", str(retry_after))],
        )

    async def _health(self, request: Request, ingest: Ingest) -> Response:
        return json_response(200, {"status": "ok"})

    async def _ready(self, request: Request, ingest: Ingest) -> Response:
        context = self.context
        if context.draining.is_set():
            return json_response(503, {"status": "draining"})
        if not context.ready.is_set():
            return json_response(503, {"status": "starting"})
        return json_response(200, {"status": "ready"})

    # Ingest

    def source(self, request: Request) -> Source:
        headers = request.headers
        kept = None
        if self.spec.keep_headers:
            drop = self._drop
            # Usually nothing is dropped: a plain copy (in C) then. A copy, since routes may edit theirs.
            kept = dict(headers) if drop.isdisjoint(headers) else {k: v for k, v in headers.items() if k not in drop}
        return Source(
            input=self.name,
            client_ip=self._client_ip.resolve(request.client[0], headers),
            user_agent=headers.get("user-agent"),
            headers=kept,
            metadata=None if self._cookie is None else self._identity(request),
        )
