"""CORS for browser trackers: preflight answers and the headers on every routed response.

Browser trackers post JSON (not a "simple" request, so the browser sends an
``OPTIONS`` preflight first) and send cookies (``credentials: include``), so
the answer must echo the request's ``Origin`` (``*`` is refused by browsers when
credentials are sent) with ``Access-Control-Allow-Credentials: true``.

Example::

    inputs:
      web:
        type: http
        cors:
          allow_origins: ["https://www.example.com", "https://*.example.org"]

CORS is not access control: any non-browser client can send any ``Origin``. A
request from an origin that is not allowed is still served (the browser will
not let the page read the answer); a preflight from one gets ``403`` saying why.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import msgspec

from streamer.http.messages import Request, Response, error_response

__all__ = ["Cors", "CorsSpec"]

OriginPattern = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(\*|https?://(\*\.)?[A-Za-z0-9.\-\[\]:]+)$",
        description="`*` for any origin, an origin such as `https://www.example.com`, "
        "or `https://*.example.com` for its subdomains.",
    ),
]


class CorsSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Cross-origin requests from browsers (trackers on web pages)."""

    allow_origins: Annotated[
        list[OriginPattern],
        msgspec.Meta(
            description="Origins whose pages may send events; the matching Origin is echoed back, never `*`.",
            examples=[["https://www.example.com", "https://*.example.org"], ["*"]],
        ),
    ]
    allow_headers: Annotated[
        list[str],
        msgspec.Meta(
            description="Request headers a page may send (answered to preflights); `*` allows whatever is asked.",
            examples=[["content-type", "sp-anonymous"]],
        ),
    ] = msgspec.field(default_factory=lambda: ["content-type", "sp-anonymous"])
    max_age: Annotated[
        int, msgspec.Meta(ge=0, description="Seconds a browser may cache a preflight answer.")
    ] = 600


class Cors:
    """Decides on origins and writes the CORS headers."""

    __slots__ = ("_any", "_exact", "_headers", "_max_age", "_suffixes")

    def __init__(self, spec: CorsSpec) -> None:
        self._any = "*" in spec.allow_origins
        self._exact = frozenset(o.lower() for o in spec.allow_origins if "*" not in o)
        # "https://*.example.org" -> ("https://", ".example.org")
        self._suffixes = tuple(
            (o.split("*", 1)[0].lower(), o.split("*", 1)[1].lower()) for o in spec.allow_origins if "*." in o
        )
        self._headers = None if "*" in spec.allow_headers else frozenset(h.lower() for h in spec.allow_headers)
        self._max_age = str(spec.max_age)

    def allows(self, origin: str) -> bool:
        if self._any:
            return True
        origin = origin.lower()
        if origin in self._exact:
            return True
        return any(origin.startswith(scheme) and origin.endswith(suffix) for scheme, suffix in self._suffixes)

    def preflight(self, request: Request, methods: Iterable[str]) -> Response:
        """The answer to ``OPTIONS`` on a routed path: 204 with the allowances, or 403 saying what is refused."""
        origin = request.headers.get("origin")
        if origin is None:
            return error_response(
                400, "not_preflight", "OPTIONS needs an Origin header (it answers CORS preflights only)"
            )
        if not self.allows(origin):
            return error_response(403, "origin_not_allowed", f"the origin {origin!r} is not in cors.allow_origins")
        allowed = sorted(set(methods) | {"OPTIONS"})
        method = request.headers.get("access-control-request-method")
        if method is not None and method not in allowed:
            return error_response(
                403, "method_not_allowed", f"{method} is not served on {request.path}; use {', '.join(allowed)}"
            )
        asked = request.headers.get("access-control-request-headers", "")
        names = [h.strip() for h in asked.split(",") if h.strip()]
        if self._headers is not None:
            refused = [h for h in names if h.lower() not in self._headers]
            if refused:
                return error_response(
                    403,
                    "header_not_allowed",
                    f"the request headers {', '.join(refused)} are not in cors.allow_headers",
                )
        headers = [
            ("access-control-allow-origin", origin),
            ("access-control-allow-credentials", "true"),
            ("access-control-allow-methods", ", ".join(allowed)),
            ("access-control-max-age", self._max_age),
            ("vary", "Origin"),
        ]
        if names:
            headers.append(("access-control-allow-headers", ", ".join(names)))
        return Response(204, b"", headers)

    def decorate(self, request: Request, response: Response) -> None:
        """Add the CORS headers to a routed response when the request's origin is allowed."""
        origin = request.headers.get("origin")
        if origin is not None and self.allows(origin):
            # A new list: handlers may answer with a shared, module-level header list.
            response.headers = [
                *response.headers,
                ("access-control-allow-origin", origin),
                ("access-control-allow-credentials", "true"),
                ("vary", "Origin"),
            ]
