"""Webhooks: any system that can POST a body to a URL.

Example::

    routes:
      - type: webhook
        path: /webhook
        arbitrary: true
        hooks:
          github:
            schema: iglu:com.github/push/jsonschema/1-0-0
            auth:
              hmac: {header: X-Hub-Signature-256, secret: "${GITHUB_WEBHOOK_SECRET}"}
          billing:
            schema: iglu:com.acme/invoice/jsonschema/1-0-0
            auth:
              secret_header: {name: X-Webhook-Token, value: "${BILLING_TOKEN}"}

``POST /webhook/NAME`` is a named webhook: its events carry the schema configured
for NAME and are validated against it; when NAME has ``auth``, a request without
the right shared secret or HMAC signature gets 401 (compared in constant time)
and nothing is written. ``POST /webhook`` is the arbitrary webhook (when
``arbitrary`` is true): anything is accepted under the permissive built-in
schema ``iglu:io.streamer/webhook/jsonschema/1-0-0``, which needs no registry.

The body becomes the payload, by ``Content-Type``: JSON (``application/json``,
``*/*+json``) as its value; a form (``application/x-www-form-urlencoded``) as an
object of strings, a repeated field becoming a list of strings; text
(``text/*``, XML, or no content type) as a string. Other media types get 415, an
empty body 400, a JSON body that does not parse (or nests more than 128 levels deep) 400. One request is one event;
the answer is ``200 {"received": 1, "invalid": 0|1}`` once every required sink
holds it. The query string is never recorded: senders often put tokens there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec

from streamer.core.envelope import Envelope, Source, new_event_id, set_schema, utc_now
from streamer.core.nesting import depth_limited
from streamer.http.messages import Request, Response, error_response
from streamer.http.routes import Accepted, Handler, Ingest, Route, RouteSpec, received
from streamer.registry.builtin import WEBHOOK_SCHEMA

__all__ = [
    "HmacAuth",
    "NamedWebhook",
    "SecretHeader",
    "WebhookAuth",
    "WebhookRoute",
    "WebhookSpec",
    "envelope_for",
    "params_payload",
]

NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]*$"
HookName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN, description="Name used in the URL path.")]
SchemaUri = Annotated[
    str,
    msgspec.Meta(
        pattern="^iglu:", description="Iglu URI of the schema events are validated against.",
        examples=["iglu:com.acme/invoice/jsonschema/1-0-0"],
    ),
]

_decode = depth_limited(msgspec.json.Decoder().decode)


class SecretHeader(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A header that must hold a shared secret."""

    name: Annotated[str, msgspec.Meta(min_length=1, description="Header name.", examples=["X-Webhook-Token"])]
    value: Annotated[
        str,
        msgspec.Meta(min_length=1, description="The secret; write `${ENV_VAR}` rather than the secret itself."),
    ]


class HmacAuth(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A header holding an HMAC of the request body (as GitHub, Stripe-like and Shopify senders do)."""

    header: Annotated[
        str, msgspec.Meta(min_length=1, description="Header carrying the signature.", examples=["X-Hub-Signature-256"])
    ]
    secret: Annotated[
        str,
        msgspec.Meta(min_length=1, description="The signing key; write `${ENV_VAR}` rather than the key itself."),
    ]
    algorithm: Annotated[
        Literal["sha1", "sha256", "sha512"], msgspec.Meta(description="Hash function of the HMAC.")
    ] = "sha256"
    prefix: Annotated[
        str | None,
        msgspec.Meta(
            description='Text before the digest in the header; default `<algorithm>=` (GitHub: "sha256="); '
            '"" for none.',
            examples=["sha256=", ""],
        ),
    ] = None
    encoding: Annotated[
        Literal["hex", "base64"], msgspec.Meta(description="How the digest is written (Shopify: base64).")
    ] = "hex"


class WebhookAuth(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a named webhook's sender proves who it is: exactly one of `secret_header` or `hmac`."""

    secret_header: Annotated[
        SecretHeader | None, msgspec.Meta(description="Require a header holding a shared secret.")
    ] = None
    hmac: Annotated[HmacAuth | None, msgspec.Meta(description="Require an HMAC signature of the body.")] = None

    def __post_init__(self) -> None:
        if (self.secret_header is None) == (self.hmac is None):
            raise ValueError("auth needs exactly one of `secret_header` or `hmac`")


class NamedWebhook(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A webhook served at `<path>/<name>`."""

    schema: SchemaUri
    auth: Annotated[WebhookAuth | None, msgspec.Meta(description="Optional sender authentication.")] = None


class WebhookSpec(RouteSpec, tag="webhook", kw_only=True):
    """Webhooks: POST any JSON, form or text body; named ones are validated and may require auth."""

    path: Annotated[
        str, msgspec.Meta(description="Arbitrary webhooks POST here; named ones to `<path>/<name>`.", pattern="^/")
    ] = "/webhook"
    arbitrary: Annotated[
        bool,
        msgspec.Meta(description="Accept POSTs to `path` itself under the permissive built-in webhook schema."),
    ] = True
    hooks: Annotated[
        dict[HookName, NamedWebhook],
        msgspec.Meta(description="Named webhooks: name -> schema and optional auth."),
    ] = msgspec.field(default_factory=dict)


class BadBody(Exception):
    """A body that cannot become a payload; carries the error response."""

    def __init__(self, response: Response) -> None:
        self.response = response


def params_payload(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Form fields or query parameters as an object; a repeated name becomes a list of its values."""
    out: dict[str, Any] = {}
    for name, value in pairs:
        previous = out.get(name)
        if previous is None:
            out[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[name] = [previous, value]
    return out


def body_payload(request: Request) -> Any:
    """The body as JSON, form fields or text, by Content-Type; raises :class:`BadBody`."""
    body = request.body
    if not body:
        raise BadBody(error_response(400, "empty_body", "the request has no body"))
    media_type = request.content_type
    if media_type == "application/json" or media_type.endswith("+json"):
        try:
            return _decode(body)
        except msgspec.DecodeError as exc:
            raise BadBody(error_response(400, "bad_json", f"the body is not valid JSON: {exc}")) from None
    is_form = media_type == "application/x-www-form-urlencoded"
    if not (is_form or not media_type or media_type.startswith("text/") or media_type.endswith("xml")):
        raise BadBody(
            error_response(
                415, "unsupported_media_type",
                f"Content-Type {media_type!r} is not accepted; send JSON, a urlencoded form or text",
            )
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadBody(error_response(400, "bad_encoding", "the body is not UTF-8 text")) from None
    if is_form:
        return params_payload(parse_qsl(text, keep_blank_values=True))
    return text


def envelope_for(source: Source, protocol: str, schema: str, payload: Any, name: str | None) -> Envelope:
    """One webhook or pixel event; ``name`` (a named endpoint) goes into ``source.metadata``."""
    if name is not None:
        source.metadata = {**(source.metadata or {}), protocol: name}
    envelope = Envelope(
        id=new_event_id(), collector_tstamp=utc_now(), source=source, protocol=protocol, payload=payload
    )
    set_schema(envelope, schema)
    return envelope


@dataclass(frozen=True, slots=True)
class _Check:
    """A named webhook's auth, prepared once: which header, and how to compute what it must hold."""

    header: str
    secret: bytes
    digest: str | None  # None: the header must equal ``secret``; else the HMAC hash name
    prefix: str
    encoding: str

    def verify(self, request: Request) -> Response | None:
        sent = request.headers.get(self.header)
        if sent is None:
            return error_response(401, "unauthorized", f"the {self.header} header is missing")
        if self.digest is None:
            if hmac.compare_digest(sent.encode("latin-1"), self.secret):
                return None
            return error_response(401, "unauthorized", f"the {self.header} header does not hold the shared secret")
        raw = hmac.new(self.secret, request.body, self.digest).digest()
        text = raw.hex() if self.encoding == "hex" else base64.b64encode(raw).decode("ascii")
        if hmac.compare_digest(sent.strip().encode("latin-1"), (self.prefix + text).encode("ascii")):
            return None
        return error_response(
            401, "unauthorized", f"the signature in {self.header} does not match the body and the shared secret"
        )


def _check(auth: WebhookAuth | None) -> _Check | None:
    if auth is None:
        return None
    if auth.secret_header is not None:
        shared = auth.secret_header
        return _Check(shared.name.lower(), shared.value.encode("utf-8"), None, "", "")
    signed = auth.hmac
    assert signed is not None  # WebhookAuth.__post_init__ guarantees one of the two
    hashlib.new(signed.algorithm)  # fail at build time, not per request, if the hash is unavailable
    prefix = f"{signed.algorithm}=" if signed.prefix is None else signed.prefix
    return _Check(signed.header.lower(), signed.secret.encode("utf-8"), signed.algorithm, prefix, signed.encoding)


class WebhookRoute(Route):
    Spec = WebhookSpec
    spec: WebhookSpec

    def __init__(self, spec: WebhookSpec, context: Any) -> None:
        super().__init__(spec, context)
        self._hooks = {name: (hook.schema, _check(hook.auth)) for name, hook in spec.hooks.items()}
        self._prefix = spec.path.rstrip("/") + "/"

    def endpoints(self) -> list[tuple[str, str, Handler]]:
        return [("POST", self.spec.path, self.handle_arbitrary), ("POST", self._prefix + "*", self.handle_named)]

    def handle_arbitrary(self, request: Request, ingest: Ingest) -> Response | Accepted:
        if not self.spec.arbitrary:
            return error_response(
                404, "not_found", f"arbitrary webhooks are disabled here; POST to {self._prefix}<name>"
            )
        return self._ingest(request, ingest, WEBHOOK_SCHEMA, None, None)

    def handle_named(self, request: Request, ingest: Ingest) -> Response | Accepted:
        name = request.path[len(self._prefix) :]
        hook = self._hooks.get(name)
        if hook is None:
            # Configured names are not listed: the endpoint must not reveal configuration.
            return error_response(404, "unknown_webhook", f"no webhook named {name!r} is configured")
        schema, check = hook
        if check is not None:
            refused = check.verify(request)
            if refused is not None:
                return refused
        return self._ingest(request, ingest, schema, name, check)

    def _ingest(
        self, request: Request, ingest: Ingest, schema: str, name: str | None, check: _Check | None
    ) -> Response | Accepted:
        try:
            payload = body_payload(request)
        except BadBody as exc:
            return exc.response
        source = ingest.source(request)
        if check is not None and source.headers:
            source.headers.pop(check.header, None)  # never record a secret (or the signature made with it)
        return Accepted([envelope_for(source, "webhook", schema, payload, name)], received)
