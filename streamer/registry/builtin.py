"""Schemas streamer ships with, under the reserved vendor ``io.streamer``; always available.

Every pipeline's resolver consults this repository without any configuration
(``streamer.core.graph`` appends it after the configured repositories). It is
asked first for ``io.streamer`` schemas, so nobody's registry can shadow them,
and last for everything else, where it answers "not here" without any I/O.

=============================================== ===================================================
URI                                             Used for
=============================================== ===================================================
``iglu:io.streamer/webhook/jsonschema/1-0-0``   arbitrary webhooks (``POST /webhook``): any JSON value
``iglu:io.streamer/pixel/jsonschema/1-0-0``     arbitrary pixels (``GET /pixel``): an object whose
                                                values are strings or lists of strings
``iglu:io.streamer/cloudevent/jsonschema/1-0-0`` CloudEvents whose ``dataschema`` is absent or not an
                                                Iglu URI: any data, or none
=============================================== ===================================================
"""

from __future__ import annotations

from typing import Any

import msgspec

from streamer.core.registry import Repository, RepositorySpec, SchemaKey

__all__ = ["BUILTIN_VENDOR", "CLOUDEVENT_SCHEMA", "PIXEL_SCHEMA", "WEBHOOK_SCHEMA", "BuiltinRepository"]

BUILTIN_VENDOR = "io.streamer"
WEBHOOK_SCHEMA = "iglu:io.streamer/webhook/jsonschema/1-0-0"
PIXEL_SCHEMA = "iglu:io.streamer/pixel/jsonschema/1-0-0"
CLOUDEVENT_SCHEMA = "iglu:io.streamer/cloudevent/jsonschema/1-0-0"


def _self(name: str, description: str, **schema: Any) -> bytes:
    document = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": description,
        "self": {"vendor": BUILTIN_VENDOR, "name": name, "format": "jsonschema", "version": "1-0-0"},
        **schema,
    }
    return msgspec.json.encode(document)


_SCHEMAS: dict[str, bytes] = {
    f"{BUILTIN_VENDOR}/webhook/jsonschema/1-0-0": _self(
        "webhook", "Any webhook body: a JSON value, a form as an object, or text. Accepts everything."
    ),
    f"{BUILTIN_VENDOR}/pixel/jsonschema/1-0-0": _self(
        "pixel",
        "Query parameters of a tracking pixel; a repeated parameter becomes a list.",
        type="object",
        additionalProperties={
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
    ),
    f"{BUILTIN_VENDOR}/cloudevent/jsonschema/1-0-0": _self(
        "cloudevent", "The data of a CloudEvent that names no Iglu dataschema. Accepts everything."
    ),
}


class BuiltinRepositorySpec(RepositorySpec, tag="builtin", kw_only=True):
    """The built-in ``io.streamer`` schemas (added to every pipeline; not configured by hand)."""


class BuiltinRepository(Repository):
    """Serves the embedded schemas from memory."""

    Spec = BuiltinRepositorySpec
    spec: BuiltinRepositorySpec

    def __init__(self, name: str = "builtin", spec: BuiltinRepositorySpec | None = None, context: Any = None) -> None:
        if spec is None:
            # Last in priority order for other vendors; first for its own (vendor prefix match).
            spec = BuiltinRepositorySpec(name="builtin", priority=2**31, vendor_prefixes=[BUILTIN_VENDOR])
        super().__init__(name, spec, context)

    def matches_vendor(self, vendor: str) -> bool:
        return vendor == BUILTIN_VENDOR

    async def fetch(self, key: SchemaKey) -> bytes | None:
        return _SCHEMAS.get(key.path)
