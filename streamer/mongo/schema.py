"""The built-in schema of a MongoDB change event: ``iglu:io.streamer/mongo_change/jsonschema/1-0-0``.

Served by the ``builtin`` repository (``streamer.registry.builtin``), so a pipeline validates change
events without any registry configuration. The payload it describes is documented field by field in
``docs/inputs.md`` (``mongo_change_stream``); values inside documents follow the rule of
:mod:`streamer.mongo.bson_json`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MONGO_CHANGE_SCHEMA", "change_schema_document"]

MONGO_CHANGE_SCHEMA = "iglu:io.streamer/mongo_change/jsonschema/1-0-0"

_NAMESPACE = {
    "type": "object",
    "properties": {"db": {"type": "string"}, "coll": {"type": "string"}},
    "required": ["db"],
}


def change_schema_document() -> dict[str, Any]:
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": "One MongoDB change-stream event (or one document of an initial snapshot, operation "
        "`read`), BSON values as Extended JSON v2.",
        "self": {"vendor": "io.streamer", "name": "mongo_change", "format": "jsonschema", "version": "1-0-0"},
        "type": "object",
        "properties": {
            "operation": {
                "type": "string",
                "minLength": 1,
                "description": "The change's operationType (insert, update, replace, delete, drop, rename, "
                "dropDatabase, invalidate, ...), or `read` for a snapshot document.",
            },
            "namespace": {
                **_NAMESPACE,
                "description": "Database and collection of the change (`ns`); an invalidate has none.",
            },
            "to": {**_NAMESPACE, "description": "rename: the new namespace."},
            "document_key": {"type": "object", "description": "`documentKey`: `_id` (and the shard key)."},
            "full_document": {"type": "object", "description": "`fullDocument`, where the server gave one."},
            "full_document_before_change": {
                "type": "object",
                "description": "`fullDocumentBeforeChange` (pre-images), where asked for and available.",
            },
            "update_description": {
                "type": "object",
                "properties": {
                    "updated_fields": {"type": "object"},
                    "removed_fields": {"type": "array", "items": {"type": "string"}},
                    "truncated_arrays": {"type": "array"},
                    "disambiguated_paths": {"type": "object"},
                },
                "required": ["updated_fields", "removed_fields"],
            },
            "cluster_time": {
                "type": "object",
                "properties": {"t": {"type": "integer"}, "i": {"type": "integer"}},
                "required": ["t", "i"],
                "description": "`clusterTime`: seconds since the epoch and the increment within that second.",
            },
            "wall_time": {"type": "string", "format": "date-time", "description": "`wallTime` (MongoDB 6.0+)."},
            "resume_token": {"type": "object", "description": "The change's `_id`: its resume token."},
            "snapshot_token": {
                "type": "object",
                "description": "read: the token the change stream starts from after the snapshot.",
            },
        },
        "required": ["operation"],
    }
