"""The schema of Snowplow events other than ``ue``: ``iglu:io.streamer/snowplow_event/jsonschema/1-0-0``.

Their payload is the tracker's fields, so the schema is one item of
``payload_data`` 1-0-4: an object of strings with ``e``, ``tv`` and ``p``
required, ``e`` one of the non-``ue`` event types. Other string fields are
allowed here; the route itself refuses them unless ``allow_unknown_fields``.
The same document is shipped as ``schemas/io.streamer/snowplow_event/jsonschema/1-0-0``.
"""

from __future__ import annotations

from typing import Any

from streamer.protocols.snowplow.events import ATOMIC_SCHEMA, EVENT_TYPES, FIELDS

__all__ = ["ATOMIC_SCHEMA", "atomic_schema_document"]


def atomic_schema_document() -> dict[str, Any]:
    """The JSON Schema document of :data:`ATOMIC_SCHEMA`."""
    vendor, name, fmt, version = ATOMIC_SCHEMA.removeprefix("iglu:").split("/")
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": "A Snowplow tracker event other than `ue` (page view, page ping, structured event, "
        "transaction, transaction item, legacy ad impression): the tracker's fields as sent, as payload_data "
        "1-0-4 defines one item. Fields the route decoded (cx/co) are removed; with allow_unknown_fields, "
        "other string fields may appear.",
        "self": {"vendor": vendor, "name": name, "format": fmt, "version": version},
        "type": "object",
        "properties": {
            **{field: {"type": "string"} for field in sorted(FIELDS)},
            "e": {"enum": [kind for kind in EVENT_TYPES if kind != "ue"]},
        },
        "required": ["e", "p", "tv"],
        "additionalProperties": {"type": "string"},
    }
