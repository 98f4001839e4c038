"""The Snowplow collector endpoints: pixel ``GET``, tp2 ``POST`` and the opt-in redirect.

Example::

    inputs:
      web:
        type: http
        port: 8080
        cors: {allow_origins: ["https://www.example.com"]}
        cookie: {name: sp, domain: example.com}
        routes:
          - type: snowplow

- ``GET /i``, ``GET /com.snowplowanalytics.snowplow/i``, ``GET /ice.png``: one event in the
  query string; answers a 1x1 GIF.
- ``POST /com.snowplowanalytics.snowplow/tp2``: a ``payload_data`` JSON body (1..n events);
  answers ``200 ok``.
- ``GET /r/tp2?u=<url>``: one event, then ``302`` to ``u`` (off by default; the hosts ``u`` may
  point to must be listed).

As a Snowplow collector does, the tracker gets its GIF or ``200 ok`` even when
events are invalid: those go to the invalid route with precise errors. Only a
body that is not ``payload_data`` at all gets ``400`` (nothing to record), and a
sink that cannot take the events gets the input's ``503``/``500`` so the
tracker retries. What the events look like, and every error, is described in
``docs/protocols.md`` (Snowplow).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from streamer.core.config import PathT
from streamer.core.envelope import Envelope, ErrorDetail, SelfDescribing, Source, utc_now
from streamer.core.nesting import depth_limited
from streamer.core.registry import InvalidSchemaURI, SchemaKey
from streamer.http.messages import Request, Response, error_response
from streamer.http.routes import Accepted, Handler, Ingest, Route, RouteSpec
from streamer.protocols.snowplow.events import ATOMIC_SCHEMA, PAYLOAD_DATA_PREFIX, UNSTRUCT_PREFIX, EventBuilder

__all__ = ["PIXEL", "URI_REDIRECT_SCHEMA", "RedirectSpec", "SnowplowRoute", "SnowplowSpec"]

PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
"""The 1x1 transparent GIF (43 bytes) Snowplow collectors answer ``GET /i`` with."""
URI_REDIRECT_SCHEMA = "iglu:com.snowplowanalytics.snowplow/uri_redirect/jsonschema/1-0-0"

_PIXEL_HEADERS = [("content-type", "image/gif"), ("cache-control", "no-cache, no-store, must-revalidate")]
_OK_HEADERS = [("content-type", "text/plain; charset=utf-8")]

UrlPath = Annotated[str, msgspec.Meta(pattern="^/", description="A URL path.")]
HostPattern = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(\*\.)?[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?$",
        description="A host name, or `*.` and a domain for any of its subdomains.",
    ),
]


class RedirectSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`GET /r/tp2?u=<url>`: record the click, then redirect the browser to `u`."""

    enabled: Annotated[
        bool,
        msgspec.Meta(description="Serve the redirect endpoint; off by default, since an open redirect helps phishing."),
    ] = False
    path: Annotated[UrlPath, msgspec.Meta(description="Path of the redirect endpoint.")] = "/r/tp2"
    allow_hosts: Annotated[
        list[HostPattern],
        msgspec.Meta(
            description="Hosts `u` may point to (http or https); `*.example.com` allows every subdomain.",
            examples=[["www.example.com", "*.example.org"]],
        ),
    ] = msgspec.field(default_factory=list)


class SnowplowSpec(RouteSpec, tag="snowplow", kw_only=True):
    """The Snowplow tracker protocol: JavaScript, Python, mobile... trackers send here."""

    pixel_paths: Annotated[
        list[UrlPath],
        msgspec.Meta(description="GET paths taking one event in the query string; each answers a 1x1 GIF."),
    ] = msgspec.field(default_factory=lambda: ["/i", "/com.snowplowanalytics.snowplow/i", "/ice.png"])
    post_paths: Annotated[
        list[UrlPath], msgspec.Meta(description="POST paths taking a payload_data body (tracker protocol 2).")
    ] = msgspec.field(default_factory=lambda: ["/com.snowplowanalytics.snowplow/tp2"])
    atomic_schema: Annotated[
        str,
        msgspec.Meta(
            description="Schema of events other than `ue` (their payload is the tracker fields). The default "
            "ships with streamer (schemas/io.streamer/snowplow_event) and mirrors payload_data 1-0-4: every "
            "field a string, `e`, `tv`, `p` required.",
            examples=[ATOMIC_SCHEMA],
        ),
    ] = ATOMIC_SCHEMA
    allow_unknown_fields: Annotated[
        bool,
        msgspec.Meta(
            description="Keep fields payload_data 1-0-4 does not define (a custom tracker's) instead of "
            "marking the event invalid."
        ),
    ] = False
    redirect: Annotated[RedirectSpec, msgspec.Meta(description="The click redirect endpoint (opt-in).")] = (
        msgspec.field(default_factory=RedirectSpec)
    )

    def check(self) -> Iterator[tuple[PathT, str]]:
        if self.redirect.enabled and not self.redirect.allow_hosts:
            yield (
                ("redirect", "allow_hosts"),
                "redirect.enabled is true but no host is allowed; list the hosts `u` may point to "
                "(for example allow_hosts: [www.example.com]), since open redirects are refused",
            )
        try:
            SchemaKey.parse(self.atomic_schema)
        except InvalidSchemaURI as exc:
            yield (("atomic_schema",), f"atomic_schema: {exc}")


class _PayloadData(msgspec.Struct):
    schema: str
    data: list[dict[str, str]]


_decode_payload = depth_limited(msgspec.json.Decoder(_PayloadData).decode)
_decode_any = depth_limited(msgspec.json.Decoder().decode)
_encode = msgspec.json.encode


class BadBody(Exception):
    """The POST body is not payload_data at all: answered with 400, nothing recorded."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_SHAPE = (
    'expected {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", '
    '"data": [{"e": "pv", "tv": "...", "p": "web", ...}]}'
)


def parse_payload_data(body: bytes) -> tuple[list[Any], bool]:
    """The events of a tp2 body, and whether all of them are objects of strings (the fast path).

    Raises :class:`BadBody` when the body is not JSON or not a payload_data document.
    """
    typed = True
    document: Any = None
    try:
        document = _decode_payload(body)
    except msgspec.ValidationError:
        typed = False  # some event is not an object of strings, or another shape: look closer below
    except msgspec.DecodeError as exc:
        raise BadBody("bad_json", f"the body is not valid JSON: {exc}") from None
    if typed:
        schema, items = document.schema, document.data
    else:
        try:
            document = _decode_any(body)
        except msgspec.DecodeError as exc:
            raise BadBody("bad_json", f"the body is not valid JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("schema"), str):
            raise BadBody("not_payload_data", f"the body is not self-describing payload_data; {_SHAPE}")
        schema, items = document["schema"], document.get("data")
        if not isinstance(items, list):
            raise BadBody("not_payload_data", f"payload_data `data` must be a list of events; {_SHAPE}")
    if not schema.startswith(PAYLOAD_DATA_PREFIX):
        raise BadBody(
            "not_payload_data", f"the body's schema is {schema[:200]!r}; expected {PAYLOAD_DATA_PREFIX}* ({_SHAPE})"
        )
    if not items:
        raise BadBody("empty_batch", "payload_data `data` holds no events; send at least one")
    return items, typed


def _item_errors(item: Any) -> list[ErrorDetail] | None:
    """Why a tp2 item is not an object of strings, or ``None`` when it is one."""
    if not isinstance(item, dict):
        return [ErrorDetail(keyword="type", message="a tracker event must be an object of string fields")]
    errors = [
        ErrorDetail(
            path=f"$.atomic.{name}",
            keyword="type",
            message=f"tracker field `{name}` must be a string, got {_json_type(value)}",
        )
        for name, value in item.items()
        if not isinstance(value, str)
    ]
    return errors or None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    return "array" if isinstance(value, list) else type(value).__name__


class SnowplowRoute(Route):
    Spec = SnowplowSpec
    spec: SnowplowSpec

    def __init__(self, spec: SnowplowSpec, context: Any) -> None:
        super().__init__(spec, context)
        self.builder = EventBuilder(atomic_schema=spec.atomic_schema, strict=not spec.allow_unknown_fields)
        self._exact_hosts = frozenset(h.lower() for h in spec.redirect.allow_hosts if not h.startswith("*."))
        self._host_suffixes = tuple(h[1:].lower() for h in spec.redirect.allow_hosts if h.startswith("*."))

    def endpoints(self) -> list[tuple[str, str, Handler]]:
        spec = self.spec
        out: list[tuple[str, str, Handler]] = [("GET", path, self.handle_pixel) for path in spec.pixel_paths]
        out += [("POST", path, self.handle_tp2) for path in spec.post_paths]
        out.append(("GET", spec.redirect.path, self.handle_redirect))
        return out

    def handle_pixel(self, request: Request, ingest: Ingest) -> Accepted:
        return Accepted([self.builder.build(dict(request.query), ingest.source(request), utc_now())], _pixel)

    def handle_tp2(self, request: Request, ingest: Ingest) -> Response | Accepted:
        if not request.body:
            return error_response(400, "empty_body", f"the request has no body; {_SHAPE}")
        try:
            items, typed = parse_payload_data(request.body)
        except BadBody as exc:
            return error_response(400, exc.kind, str(exc))
        source = ingest.source(request)
        now = utc_now()
        if typed:
            envelopes = self.builder.build_many(items, source, now)
        else:
            envelopes = [self._build_checked(item, source, now) for item in items]
        return Accepted(envelopes, _ok)

    def _build_checked(self, item: Any, source: Source, now: Any) -> Envelope:
        errors = _item_errors(item)
        if errors is not None:
            return self.builder.build_invalid(item, source, now, errors)
        return self.builder.build(item, source, now)

    def handle_redirect(self, request: Request, ingest: Ingest) -> Response | Accepted:
        spec = self.spec.redirect
        if not spec.enabled:
            return error_response(
                404, "redirect_disabled",
                "the redirect endpoint is off; enable it with `redirect: {enabled: true, allow_hosts: [...]}` "
                "on the snowplow route",
            )
        fields = dict(request.query)
        target = fields.pop("u", None)
        if not target:
            return error_response(400, "missing_target", "the redirect needs the target URL in the `u` parameter")
        refusal = self._refuse_target(target)
        if refusal is not None:
            return error_response(400, "redirect_not_allowed", refusal)
        redirect = {"uri": target}
        recorded_as_event = "e" not in fields
        if recorded_as_event:
            # As Snowplow enrich does: a bare redirect becomes a uri_redirect self-describing event.
            fields["e"] = "ue"
            fields.setdefault("p", "web")
            fields.setdefault("tv", "r-tp2")
            fields["ue_pr"] = _encode(
                {"schema": f"{UNSTRUCT_PREFIX}0", "data": {"schema": URI_REDIRECT_SCHEMA, "data": redirect}}
            ).decode()
        envelope = self.builder.build(fields, ingest.source(request), utc_now())
        if not recorded_as_event:
            # A tracker event that also redirects: the redirect travels as one more context.
            envelope.contexts = [*(envelope.contexts or []), SelfDescribing(schema=URI_REDIRECT_SCHEMA, data=redirect)]
        return Accepted([envelope], functools.partial(_redirect, target))

    def _refuse_target(self, target: str) -> str | None:
        """Why ``target`` may not be redirected to, or ``None`` when it may."""
        if not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
            return "the target URL must be ASCII without spaces or control characters (percent-encode them)"
        try:
            parts = urlsplit(target)
            host = (parts.hostname or "").lower()
        except ValueError as exc:
            return f"the target URL is malformed: {exc}"
        if parts.scheme not in ("http", "https") or not host or "\\" in target:
            return "the target must be an absolute http or https URL"
        if host in self._exact_hosts or any(host.endswith(suffix) for suffix in self._host_suffixes):
            return None
        return f"the host {host!r} is not in redirect.allow_hosts of the snowplow route"


def _pixel(envelopes: list[Envelope]) -> Response:
    return Response(200, PIXEL, list(_PIXEL_HEADERS))


def _ok(envelopes: list[Envelope]) -> Response:
    return Response(200, b"ok", list(_OK_HEADERS))


def _redirect(target: str, envelopes: list[Envelope]) -> Response:
    return Response(302, b"", [("location", target), ("cache-control", "no-store")])
