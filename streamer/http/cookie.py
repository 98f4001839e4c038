"""The identity cookie: a collector-set id that follows a browser across requests and sites' pages.

When configured on an HTTP input, every routed request is given an id: the
value of the cookie when the browser sent one, else a new random UUID. The
response sets (or refreshes) the cookie, and the id lands in each envelope as
``source.metadata["network_user_id"]`` (a Snowplow tracker's ``tnuid`` field
overrides it per event). A request with the ``SP-Anonymous`` header (Snowplow
trackers' anonymous tracking) gets no cookie and records no id.

Example::

    inputs:
      web:
        type: http
        cookie:
          name: sp
          domain: example.com
          max_age: 31536000
          same_site: None
          secure: true
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

import msgspec

from streamer.core.envelope import new_event_id
from streamer.http.messages import Request, Response

__all__ = ["NETWORK_USER_ID", "CookieSpec", "IdentityCookie"]

NETWORK_USER_ID = "network_user_id"
"""The ``source.metadata`` key holding the cookie's value."""

# Values the collector accepts back from a browser; anything else is replaced by a new id.
_VALUE = re.compile(r"[A-Za-z0-9._\-]{1,128}")


class CookieSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A collector-set cookie identifying the browser (Snowplow's network user id)."""

    name: Annotated[
        str, msgspec.Meta(pattern=r"^[A-Za-z0-9_\-]{1,64}$", description="Cookie name.", examples=["sp"])
    ] = "sp"
    domain: Annotated[
        str | None,
        msgspec.Meta(
            description="Cookie domain, so that every subdomain shares the id; unset: the collector's host only.",
            examples=["example.com"],
        ),
    ] = None
    path: Annotated[str, msgspec.Meta(pattern="^/", description="Cookie path.")] = "/"
    max_age: Annotated[
        int, msgspec.Meta(ge=1, description="Seconds the browser keeps the cookie; refreshed on every request.")
    ] = 31_536_000
    same_site: Annotated[
        Literal["None", "Lax", "Strict"],
        msgspec.Meta(
            description="SameSite attribute. `None` lets pages on other sites send it (third-party collector "
            "domain) and always comes with Secure, since browsers refuse it otherwise."
        ),
    ] = "None"
    secure: Annotated[
        bool,
        msgspec.Meta(description="Send the Secure attribute (HTTPS only). Forced on when same_site is None."),
    ] = True
    http_only: Annotated[
        bool, msgspec.Meta(description="Send the HttpOnly attribute: page scripts cannot read the cookie.")
    ] = True


class IdentityCookie:
    """Reads, mints and sets the identity cookie."""

    __slots__ = ("_attributes", "name")

    def __init__(self, spec: CookieSpec) -> None:
        self.name = spec.name
        attributes = [f"Max-Age={spec.max_age}", f"Path={spec.path}"]
        if spec.domain:
            attributes.append(f"Domain={spec.domain}")
        attributes.append(f"SameSite={spec.same_site}")
        if spec.secure or spec.same_site == "None":
            attributes.append("Secure")
        if spec.http_only:
            attributes.append("HttpOnly")
        self._attributes = "; " + "; ".join(attributes)

    def read(self, request: Request) -> str | None:
        """The id of this request: the cookie's value, or ``None`` (none sent, or anonymous tracking)."""
        header = request.headers.get("cookie")
        if header is None or "sp-anonymous" in request.headers:
            return None
        prefix = self.name + "="
        for part in header.split(";"):
            part = part.strip()
            if part.startswith(prefix):
                value = part[len(prefix) :].strip('"')
                if _VALUE.fullmatch(value):
                    return value
        return None

    def ensure(self, request: Request) -> str | None:
        """Give the request an id (minting one when it has none) and return its ``Set-Cookie`` value.

        A minted id is added to the request's ``cookie`` header, so everything
        downstream sees the request as if the browser had sent it.
        """
        if "sp-anonymous" in request.headers:
            return None
        value = self.read(request)
        if value is None:
            value = new_event_id()
            header = request.headers.get("cookie")
            request.headers["cookie"] = f"{header}; {self.name}={value}" if header else f"{self.name}={value}"
        return f"{self.name}={value}{self._attributes}"

    @staticmethod
    def set(response: Response, set_cookie: str) -> None:
        # A new list: handlers may answer with a shared, module-level header list.
        response.headers = [*response.headers, ("set-cookie", set_cookie)]
