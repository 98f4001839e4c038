"""Admin endpoints of the schema registry: purge the validator cache, serve schemas.

- ``POST /c/purge`` empties the whole cache; ``POST /c/purge?schema=URI`` forgets
  one schema. Answers ``200 {"purged": n}``. It needs ``Authorization: Bearer
  <purge_token>`` (compared in constant time; 401 otherwise) and is disabled,
  with a 403 saying so, when no token is configured.
- ``GET /s/URI`` (``/s/iglu:com.acme/checkout/jsonschema/1-0-0``) answers the
  schema document as the registry resolves it (through the cache): 400 for a URI
  that is not strict Iglu form, 404 when no registry has it, 503 when a registry
  could not be asked, 500 when the stored schema is broken. ``serve: false``
  removes the endpoint.

Example::

    inputs:
      web:
        type: http
        routes:
          - type: self_describing
          - type: schemas
            purge_token: ${PURGE_TOKEN}
            serve: true
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated
from urllib.parse import unquote

import msgspec

from streamer.core.registry import (
    BrokenSchema,
    InvalidSchemaURI,
    RepositoryUnavailable,
    SchemaKey,
    SchemaNotFound,
)
from streamer.http.messages import Request, Response, error_response, json_response
from streamer.http.routes import Handler, Ingest, Route, RouteSpec

__all__ = ["SchemasRoute", "SchemasSpec"]

log = logging.getLogger("streamer.registry")

_encode = msgspec.json.Encoder().encode


class SchemasSpec(RouteSpec, tag="schemas", kw_only=True):
    """Cache purge and schema serving for the pipeline's registry."""

    purge_token: Annotated[
        str | None,
        msgspec.Meta(
            description="Bearer token that `POST /c/purge` requires; purging is disabled when unset or empty.",
            examples=["${PURGE_TOKEN}"],
        ),
    ] = None
    purge_path: Annotated[
        str, msgspec.Meta(pattern="^/", description="Path of the purge endpoint.", examples=["/c/purge"])
    ] = "/c/purge"
    serve: Annotated[
        bool, msgspec.Meta(description="Serve schemas at `GET <serve_path>/<iglu URI>`.", examples=[True, False])
    ] = True
    serve_path: Annotated[
        str,
        msgspec.Meta(pattern="^/", description="Prefix under which schemas are served.", examples=["/s"]),
    ] = "/s"


class SchemasRoute(Route):
    Spec = SchemasSpec
    spec: SchemasSpec

    def endpoints(self) -> list[tuple[str, str, Handler]]:
        endpoints: list[tuple[str, str, Handler]] = [("POST", self.spec.purge_path, self.purge)]
        if self.spec.serve:
            endpoints.append(("GET", f"{self.spec.serve_path.rstrip('/')}/*", self.serve))
        return endpoints

    async def purge(self, request: Request, ingest: Ingest) -> Response:
        token = self.spec.purge_token
        if not token:
            return error_response(
                403, "purge_disabled", "cache purge is disabled: set `purge_token` on the schemas route to enable it"
            )
        given = request.headers.get("authorization", "")
        scheme, _, credentials = given.partition(" ")
        # compare_digest over bytes: constant time whatever the token holds.
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), token.encode()):
            return error_response(
                401,
                "unauthorized",
                "purge needs the header `Authorization: Bearer <purge_token>`",
                headers=[("www-authenticate", 'Bearer realm="streamer"')],
            )
        resolver = self.context.resolver
        uri = request.query.get("schema")
        if uri is None:
            count = resolver.purge()
            log.info("schema cache purged entries=%d", count)
            return json_response(200, {"purged": count})
        try:
            SchemaKey.parse(uri)
        except InvalidSchemaURI as exc:
            return error_response(400, "schema_uri", str(exc))
        count = resolver.purge(uri)
        log.info("schema cache purged schema=%s entries=%d", uri, count)
        return json_response(200, {"purged": count, "schema": uri})

    async def serve(self, request: Request, ingest: Ingest) -> Response:
        prefix = f"{self.spec.serve_path.rstrip('/')}/"
        uri = unquote(request.path[len(prefix):])
        if not uri.startswith("iglu:"):
            uri = f"iglu:{uri}"
        try:
            SchemaKey.parse(uri)
        except InvalidSchemaURI as exc:
            return error_response(400, "schema_uri", str(exc))
        entry = self.context.resolver.lookup(uri) or await self.context.resolver.resolve(uri)
        error = entry.error
        if error is None:
            return Response(200, _encode(entry.document), [("content-type", "application/json")])
        if isinstance(error, SchemaNotFound):
            return error_response(404, error.keyword, str(error))
        if isinstance(error, RepositoryUnavailable):
            return error_response(503, error.keyword, str(error), headers=[("retry-after", "5")])
        if isinstance(error, BrokenSchema):
            return error_response(500, error.keyword, str(error))
        return error_response(400, error.keyword, str(error))
