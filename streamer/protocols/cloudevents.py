"""CloudEvents 1.0 over HTTP: structured, batched and binary content modes.

Example::

    routes:
      - type: cloudevents
        path: /cloudevents

The mode is chosen as the HTTP binding says:

- ``Content-Type: application/cloudevents+json``: the body is one event in the
  JSON format (attributes and ``data`` or ``data_base64`` in one object).
- ``Content-Type: application/cloudevents-batch+json``: the body is a JSON array
  of such events (an empty array is accepted and writes nothing).
- any other request carrying ``ce-specversion``: binary mode; attributes are the
  ``ce-*`` headers (percent-decoded), ``Content-Type`` is ``datacontenttype`` and
  the body is the data.
- no ``ce-*`` headers and a JSON body: read leniently as structured (an object)
  or batched (an array), for senders that label events ``application/json``.

Each event becomes one envelope with ``protocol: cloudevents``. Every attribute
(``id``, ``source``, ``type``, ``specversion``, ``subject``, ``time``,
``datacontenttype``, ``dataschema`` and extensions) is kept, as sent, in
``source.metadata.cloudevents``; ``time`` also becomes ``event_tstamp``. The
payload is the data: the JSON value for JSON data, text for text data, and a
base64 string for binary data (``source.metadata.data_encoding`` is then
``base64``). The envelope's own ``id`` is a fresh UUID, since a CloudEvent id is
only unique per source.

Schema: ``dataschema`` when it is an Iglu URI (``iglu:vendor/name/jsonschema/1-0-0``);
otherwise ``default_schema`` (by default the permissive built-in
``iglu:io.streamer/cloudevent/jsonschema/1-0-0``); with ``default_schema: null``
such events go to the invalid route saying why.

A request that is not a CloudEvent (a required attribute missing or empty, a
``specversion`` other than 1.0, an attribute of the wrong type, a ``time`` that
is not RFC 3339, a body that is not JSON where JSON is required, or JSON nesting more than 128
levels deep) gets 400 naming
the problem (415 for an event format other than JSON), and nothing of it is written. Otherwise the answer is
``200 {"received": n, "invalid": k}`` once every required sink holds the events.
"""

from __future__ import annotations

import binascii
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote

import msgspec

from streamer.core.envelope import Envelope, ErrorDetail, Source, new_event_id, set_schema, utc_now
from streamer.core.nesting import TooDeep, depth_limited
from streamer.http.messages import Request, Response, error_response
from streamer.http.routes import Accepted, Handler, Ingest, Route, RouteSpec, received
from streamer.registry.builtin import CLOUDEVENT_SCHEMA

__all__ = ["CloudEventsRoute", "CloudEventsSpec", "Malformed"]

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
REQUIRED = ("id", "source", "specversion", "type")
_STRING_OPTIONAL = ("datacontenttype", "dataschema", "subject", "time")
_PROTOCOL = "cloudevents"

_decode = depth_limited(msgspec.json.Decoder().decode)


class CloudEventsSpec(RouteSpec, tag="cloudevents", kw_only=True):
    """CloudEvents 1.0 HTTP binding: structured, batched and binary mode."""

    path: Annotated[str, msgspec.Meta(description="Path that accepts POSTs.", pattern="^/", examples=["/"])] = (
        "/cloudevents"
    )
    default_schema: Annotated[
        str | None,
        msgspec.Meta(
            description="Schema for events whose `dataschema` is absent or not an Iglu URI; null sends such "
            "events to the invalid route. The default accepts any data.",
            examples=["iglu:com.acme/any_event/jsonschema/1-0-0"],
        ),
    ] = CLOUDEVENT_SCHEMA


class Malformed(Exception):
    """The request is not a CloudEvent; becomes a 400 (415 for an unknown format) with ``kind`` as its ``error``."""

    def __init__(self, kind: str, message: str, *, status: int = 400, **details: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.details = details


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _is_text(media_type: str) -> bool:
    return media_type.startswith("text/") or media_type in ("application/xml",) or media_type.endswith("+xml")


def _where(index: int | None) -> str:
    return "the CloudEvent" if index is None else f"event [{index}] of the batch"


def check_attributes(attributes: dict[str, Any], index: int | None = None) -> datetime | None:
    """Raise :class:`Malformed` unless the attributes make a CloudEvent 1.0; return its ``time``."""
    missing = [name for name in REQUIRED if not isinstance(attributes.get(name), str) or not attributes[name]]
    if missing:
        raise Malformed(
            "missing_attributes",
            f"{_where(index)} is missing required attributes: {', '.join(missing)} "
            "(each must be a non-empty string)",
            missing=missing,
        )
    if attributes["specversion"] != "1.0":
        raise Malformed(
            "unsupported_specversion",
            f"{_where(index)} has specversion {attributes['specversion']!r}; only 1.0 is supported",
        )
    for name in _STRING_OPTIONAL:
        value = attributes.get(name)
        if value is not None and not isinstance(value, str):
            raise Malformed("bad_attribute", f"{_where(index)} attribute `{name}` must be a string")
    text = attributes.get("time")
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise Malformed(
            "bad_attribute",
            f"{_where(index)} attribute `time` is {text!r}, not an RFC 3339 timestamp with an offset "
            "(for example 2024-05-01T12:00:00Z)",
        )
    return when


class CloudEventsRoute(Route):
    Spec = CloudEventsSpec
    spec: CloudEventsSpec

    def endpoints(self) -> list[tuple[str, str, Handler]]:
        return [("POST", self.spec.path, self.handle)]

    def handle(self, request: Request, ingest: Ingest) -> Response | Accepted:
        try:
            envelopes = self.envelopes(request, ingest.source(request))
        except Malformed as exc:
            return error_response(exc.status, exc.kind, str(exc), **exc.details)
        if not envelopes:
            return received(envelopes)
        return Accepted(envelopes, received)

    def envelopes(self, request: Request, source: Source) -> list[Envelope]:
        """The request's events as envelopes; raises :class:`Malformed` if it holds no valid CloudEvent(s)."""
        media_type = request.content_type
        headers = request.headers
        if media_type == STRUCTURED:
            return [self._structured(self._json(request.body), source, None)]
        if media_type == BATCH:
            return self._batch(self._json(request.body), source)
        if media_type.startswith("application/cloudevents"):
            raise Malformed(
                "unsupported_format",
                f"event format {media_type!r} is not supported; use {STRUCTURED} or {BATCH}",
                status=415,
            )
        if "ce-specversion" in headers or any(name.startswith("ce-") for name in headers):
            return [self._binary(request, source)]
        if _is_json(media_type) and request.body:
            document = self._json(request.body)
            if isinstance(document, list):
                return self._batch(document, source)
            return [self._structured(document, source, None)]
        raise Malformed(
            "missing_attributes",
            f"the request is not a CloudEvent: it is missing required attributes: {', '.join(REQUIRED)}; "
            f"send Content-Type {STRUCTURED} or {BATCH}, or binary mode with ce-id, ce-source, "
            "ce-specversion and ce-type headers",
            missing=list(REQUIRED),
        )

    @staticmethod
    def _json(body: bytes) -> Any:
        if not body:
            raise Malformed("empty_body", "the request has no body; send a CloudEvent in JSON")
        try:
            return _decode(body)
        except msgspec.DecodeError as exc:
            raise Malformed("bad_json", f"the body is not valid JSON: {exc}") from None

    def _batch(self, document: Any, source: Source) -> list[Envelope]:
        if not isinstance(document, list):
            raise Malformed("bad_batch", f"a {BATCH} body must be a JSON array of CloudEvents")
        return [self._structured(item, source, index) for index, item in enumerate(document)]

    def _structured(self, document: Any, source: Source, index: int | None) -> Envelope:
        if not isinstance(document, dict):
            raise Malformed("bad_event", f"{_where(index)} must be a JSON object")
        when = check_attributes(document, index)
        attributes = dict(document)
        payload = attributes.pop("data", None)
        encoding = None
        if "data_base64" in attributes:
            if "data" in document:
                raise Malformed("bad_event", f"{_where(index)} has both `data` and `data_base64`; send one")
            payload = attributes.pop("data_base64")
            if not isinstance(payload, str) or not _is_base64(payload):
                raise Malformed("bad_attribute", f"{_where(index)} `data_base64` must be a base64 string")
            encoding = "base64"
        return self._envelope(attributes, payload, encoding, when, source)

    def _binary(self, request: Request, source: Source) -> Envelope:
        attributes: dict[str, Any] = {}
        for name, value in request.headers.items():
            if name.startswith("ce-") and len(name) > 3:
                attributes[name[3:]] = unquote(value) if "%" in value else value
        content_type = request.headers.get("content-type")
        if content_type is not None:
            attributes["datacontenttype"] = content_type
        when = check_attributes(attributes)
        body = request.body
        encoding = None
        payload: Any = None
        if body:
            media_type = request.content_type
            if _is_json(media_type):
                payload = self._json(body)
            elif not media_type:
                # No datacontenttype: JSON when it parses (what SDKs send), else text, else bytes.
                try:
                    payload = _decode(body)
                except TooDeep as exc:
                    # JSON, by the look of it, but deeper than any JSON is taken: refused like the rest.
                    raise Malformed("bad_json", f"the body is not valid JSON: {exc}") from None
                except msgspec.DecodeError:
                    payload, encoding = _text_or_base64(body)
            elif _is_text(media_type):
                payload, encoding = _text_or_base64(body)
            else:
                payload, encoding = binascii.b2a_base64(body, newline=False).decode("ascii"), "base64"
        return self._envelope(attributes, payload, encoding, when, source)

    def _envelope(
        self, attributes: dict[str, Any], payload: Any, encoding: str | None, when: datetime | None, source: Source
    ) -> Envelope:
        metadata: dict[str, Any] = {**source.metadata} if source.metadata else {}
        metadata["cloudevents"] = attributes
        if encoding is not None:
            metadata["data_encoding"] = encoding
        envelope = Envelope(
            id=new_event_id(),
            collector_tstamp=utc_now(),
            source=msgspec.structs.replace(source, metadata=metadata),
            protocol=_PROTOCOL,
            payload=payload,
            event_tstamp=when,
        )
        dataschema = attributes.get("dataschema")
        if dataschema is not None and dataschema.startswith("iglu:"):
            set_schema(envelope, dataschema)
        elif self.spec.default_schema is not None:
            set_schema(envelope, self.spec.default_schema)
        else:
            got = "none" if dataschema is None else repr(dataschema)
            envelope.fail(
                ErrorDetail(
                    keyword="schema",
                    message=f"the CloudEvent's dataschema is {got}, not an Iglu URI, and this route has no "
                    "default_schema; set dataschema to iglu:vendor/name/jsonschema/M-R-A",
                )
            )
        return envelope


def _is_base64(text: str) -> bool:
    try:
        binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return False
    return True


def _text_or_base64(body: bytes) -> tuple[str, str | None]:
    try:
        return body.decode("utf-8"), None
    except UnicodeDecodeError:
        return binascii.b2a_base64(body, newline=False).decode("ascii"), "base64"
