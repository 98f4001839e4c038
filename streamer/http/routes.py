"""The route interface: how a protocol turns HTTP requests into envelopes.

A route connector (``streamer/protocols/<name>.py``) declares a ``Spec`` tagged
by ``type`` and, once built, lists the ``(method, path, handler)`` it serves.
A path ending in ``/*`` matches any deeper path (``/webhook/*``). Handlers get
the request and an :class:`Ingest`, which builds source metadata.

A handler is synchronous: it answers at once with a :class:`Response` (a refusal,
a preflight), or returns :class:`Accepted`: envelopes for the input to deliver,
and how to answer once every required sink holds them (the input answers 500
instead when one failed, 503 when it took too long). Keeping handlers
synchronous lets the input answer from callbacks, with no task per request. A
handler with other waiting to do (a schema fetch) may be an ``async def``
returning its :class:`Response`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from streamer.core.components import BOTH_BACKENDS, Context, Spec
from streamer.core.envelope import Envelope
from streamer.http.messages import JSON_CONTENT_TYPE, Request, Response

__all__ = ["Accepted", "Handler", "Ingest", "Route", "RouteSpec", "received"]


class RouteSpec(Spec):
    """Base of every route's config."""


class Ingest(ABC):
    """What a route handler may ask of the HTTP input that serves it."""

    input_name: str

    @abstractmethod
    def source(self, request: Request) -> Any:
        """The envelope ``Source`` for a request: input, client IP, user agent, filtered headers."""


class Accepted:
    """A handler's events, and the response to send once every required sink holds them.

    ``respond(envelopes)`` is called after delivery, when the processors have run (so
    ``envelope.valid`` is known); it is usually a bound method or a module function, not a closure
    made per request.
    """

    __slots__ = ("envelopes", "respond")

    def __init__(self, envelopes: list[Envelope], respond: Callable[[list[Envelope]], Response]) -> None:
        self.envelopes = envelopes
        self.respond = respond


def received(envelopes: list[Envelope]) -> Response:
    """``200 {"received": n, "invalid": k}``: the usual answer to delivered events."""
    invalid = 0
    for envelope in envelopes:
        if not envelope.valid:
            invalid += 1
    # Formatted rather than encoded from a dict; a fresh header list, since CORS and cookies add to it.
    return Response(200, b'{"received":%d,"invalid":%d}' % (len(envelopes), invalid), [JSON_CONTENT_TYPE])


Handler = Callable[[Request, Ingest], "Response | Accepted | Awaitable[Response]"]


class Route(ABC):
    """A protocol served by the HTTP input."""

    Spec: ClassVar[type[msgspec.Struct]]
    backends: ClassVar[frozenset[str]] = BOTH_BACKENDS

    def __init__(self, spec: Any, context: Context) -> None:
        self.spec = spec
        self.context = context

    @abstractmethod
    def endpoints(self) -> list[tuple[str, str, Handler]]:
        """``(method, path, handler)`` triples; ``path`` may end in ``/*``."""
