"""Self-describing JSON over HTTP: ``{"schema": "iglu:...", "data": {...}}``, one object or an array.

Example::

    routes:
      - type: self_describing
        path: /events

A body that is not JSON, or nests arrays and objects more than 128 levels deep
(``streamer.core.nesting.MAX_JSON_DEPTH``), gets 400 ``bad_json``. An item that is JSON but not self-describing
is kept: it goes to the invalid route with an error saying what is missing. The
response is ``200 {"received": n, "invalid": k}`` once every required sink holds
the events.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from streamer.core.envelope import Envelope, fill_self_describing, new_event_id, utc_now
from streamer.core.nesting import depth_limited
from streamer.http.messages import Request, Response, error_response
from streamer.http.routes import Accepted, Handler, Ingest, Route, RouteSpec, received

__all__ = ["SelfDescribingRoute", "SelfDescribingSpec", "envelopes_from_items"]


class SelfDescribingSpec(RouteSpec, tag="self_describing", kw_only=True):
    """Self-describing JSON events posted as one object or an array of objects."""

    path: Annotated[str, msgspec.Meta(description="Path that accepts POSTs.", pattern="^/")] = "/events"
    schema_key: Annotated[str, msgspec.Meta(description="Key holding the schema URI.")] = "schema"
    data_key: Annotated[str, msgspec.Meta(description="Key holding the event data.")] = "data"
    contexts_key: Annotated[
        str, msgspec.Meta(description="Key holding a list of self-describing contexts (optional in each event).")
    ] = "contexts"


_decode = depth_limited(msgspec.json.Decoder().decode)
_PROTOCOL = "self_describing"


def envelopes_from_items(
    items: list[Any], source: Any, spec: SelfDescribingSpec, protocol: str = _PROTOCOL
) -> list[Envelope]:
    """One envelope per item; an item that is not self-describing becomes an invalid envelope."""
    now = utc_now()
    keys = (spec.schema_key, spec.data_key, spec.contexts_key)
    out = []
    for item in items:
        envelope = Envelope(id=new_event_id(), collector_tstamp=now, source=source, protocol=protocol)
        fill_self_describing(envelope, item, *keys)
        out.append(envelope)
    return out


class SelfDescribingRoute(Route):
    Spec = SelfDescribingSpec
    spec: SelfDescribingSpec

    def endpoints(self) -> list[tuple[str, str, Handler]]:
        return [("POST", self.spec.path, self.handle)]

    def handle(self, request: Request, ingest: Ingest) -> Response | Accepted:
        if not request.body:
            return error_response(400, "empty_body", "the request has no body; send a JSON object or array")
        try:
            document = _decode(request.body)
        except msgspec.DecodeError as exc:
            return error_response(400, "bad_json", f"the body is not valid JSON: {exc}")
        items = document if isinstance(document, list) else [document]
        if not items:
            return error_response(400, "empty_batch", "the array holds no events")
        return Accepted(envelopes_from_items(items, ingest.source(request), self.spec), received)
