"""Tracking pixels: ``GET`` an image URL whose query parameters are the event.

Example::

    routes:
      - type: pixel
        path: /pixel
        arbitrary: true
        pixels:
          open: {schema: "iglu:com.acme/email_open/jsonschema/1-0-0"}

``GET /pixel/NAME?campaign=spring&user=42`` is a named pixel: the payload
``{"campaign": "spring", "user": "42"}`` is validated against the schema
configured for NAME. ``GET /pixel?...`` is the arbitrary pixel (when
``arbitrary`` is true), accepted under the built-in
``iglu:io.streamer/pixel/jsonschema/1-0-0`` (an object of strings), which needs
no registry. Query values are strings; a repeated parameter becomes a list.

The answer is a 1x1 transparent GIF with ``Cache-Control: no-store`` once every
required sink holds the event, so that each view reaches the collector; an
unknown NAME gets 404, and a sink timeout or failure the usual JSON 503/500.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

import msgspec

from streamer.core.envelope import Envelope
from streamer.http.messages import Request, Response, error_response
from streamer.http.routes import Accepted, Handler, Ingest, Route, RouteSpec
from streamer.protocols.webhook import HookName, SchemaUri, envelope_for, params_payload
from streamer.registry.builtin import PIXEL_SCHEMA

__all__ = ["GIF", "NamedPixel", "PixelRoute", "PixelSpec"]

GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
"""The smallest transparent GIF: 1x1, 43 bytes."""

_HEADERS = [
    ("content-type", "image/gif"),
    ("cache-control", "no-cache, no-store, must-revalidate"),
]


class NamedPixel(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A pixel served at `<path>/<name>`."""

    schema: SchemaUri


class PixelSpec(RouteSpec, tag="pixel", kw_only=True):
    """Tracking pixels: GET an image; the query parameters are the event."""

    path: Annotated[
        str, msgspec.Meta(description="Arbitrary pixels are served here; named ones at `<path>/<name>`.", pattern="^/")
    ] = "/pixel"
    arbitrary: Annotated[
        bool, msgspec.Meta(description="Serve `path` itself under the permissive built-in pixel schema.")
    ] = True
    pixels: Annotated[
        dict[HookName, NamedPixel], msgspec.Meta(description="Named pixels: name -> schema.")
    ] = msgspec.field(default_factory=dict)


class PixelRoute(Route):
    Spec = PixelSpec
    spec: PixelSpec

    def __init__(self, spec: PixelSpec, context: Any) -> None:
        super().__init__(spec, context)
        self._schemas = {name: pixel.schema for name, pixel in spec.pixels.items()}
        self._prefix = spec.path.rstrip("/") + "/"

    def endpoints(self) -> list[tuple[str, str, Handler]]:
        return [("GET", self.spec.path, self.handle_arbitrary), ("GET", self._prefix + "*", self.handle_named)]

    def handle_arbitrary(self, request: Request, ingest: Ingest) -> Response | Accepted:
        if not self.spec.arbitrary:
            return error_response(404, "not_found", f"arbitrary pixels are disabled here; use {self._prefix}<name>")
        return self._ingest(request, ingest, PIXEL_SCHEMA, None)

    def handle_named(self, request: Request, ingest: Ingest) -> Response | Accepted:
        name = request.path[len(self._prefix) :]
        schema = self._schemas.get(name)
        if schema is None:
            return error_response(404, "unknown_pixel", f"no pixel named {name!r} is configured")
        return self._ingest(request, ingest, schema, name)

    def _ingest(self, request: Request, ingest: Ingest, schema: str, name: str | None) -> Accepted:
        payload = params_payload(parse_qsl(request.query_string, keep_blank_values=True))
        return Accepted([envelope_for(ingest.source(request), "pixel", schema, payload, name)], _gif)


def _gif(envelopes: list[Envelope]) -> Response:
    return Response(200, GIF, list(_HEADERS))
