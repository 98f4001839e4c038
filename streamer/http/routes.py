"""The route interface: how a protocol turns HTTP requests into envelopes.

A route connector (``streamer/protocols/<name>.py``) declares a ``Spec`` tagged
by ``type`` and, once built, lists the ``(method, path, handler)`` it serves.
A path ending in ``/*`` matches any deeper path (``/webhook/*``). Handlers get
the request and an :class:`Ingest`, which builds source metadata and submits
envelopes with the input's timeout and acknowledgement rules.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import msgspec

from streamer.core.components import BOTH_BACKENDS, Context, Spec
from streamer.http.messages import Request, Response

__all__ = ["Handler", "Ingest", "Route", "RouteSpec"]


class RouteSpec(Spec):
    """Base of every route's config."""


class Ingest(ABC):
    """What a route handler may ask of the HTTP input that serves it."""

    input_name: str

    @abstractmethod
    def source(self, request: Request) -> Any:
        """The envelope ``Source`` for a request: input, client IP, user agent, filtered headers."""

    @abstractmethod
    async def deliver(self, envelopes: list[Any]) -> Response | None:
        """Submit and wait for acknowledgement.

        Returns ``None`` when every required sink holds the envelopes, or the error
        response to send instead (500 when a sink failed). Waiting longer than the
        input's ``request_timeout`` is the server's business: it cancels the handler
        and answers 503 with Retry-After.
        """


Handler = Callable[[Request, Ingest], Awaitable[Response]]


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
