"""The event a MongoDB change becomes: its payload (BSON values as Extended JSON) and its deterministic id.

The payload's keys are documented in docs/inputs.md (``mongo_change_stream``) and described by the
built-in schema (:mod:`streamer.mongo.schema`). Ids: a change's is a UUIDv5 of its resume token; a
snapshot document's, of the snapshot's start token and the document's ``_id``. Both are the same every
time the same change or document is read again, which is what lets an idempotent sink store it once.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from streamer.mongo.bson_json import JsonMode, to_json

__all__ = ["EVENT_ID_NAMESPACE", "change_event_id", "change_payload", "read_event_id", "read_payload", "token_text"]

EVENT_ID_NAMESPACE = uuid.UUID("5d0a3c52-6f1e-5b6e-9a57-6d6f6e676f21")
"""UUIDv5 namespace of the event ids (``uuid5(namespace, "change/" + token)``)."""



def change_event_id(token: Mapping[str, Any]) -> str:
    """The event id of the change whose resume token is ``token``: the same on every read of that change.

    ``str(uuid.uuid5(EVENT_ID_NAMESPACE, "change/" + token))``, computed without a ``UUID`` object.
    """
    return _uuid5("change/" + token_text(token))


_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes


def _uuid5(name: str) -> str:
    # uuid.uuid5 builds a UUID object (its __init__ checks every argument): ~3x this.
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def token_text(token: Mapping[str, Any] | None) -> str:
    """A resume token as text: its ``_data`` (current servers), else its canonical Extended JSON."""
    if token is None:
        return "none"
    data = token.get("_data")
    if isinstance(data, str):
        return data
    from bson import json_util

    return str(json_util.dumps(token, json_options=json_util.CANONICAL_JSON_OPTIONS))


def change_payload(change: Mapping[str, Any], mode: JsonMode = "relaxed") -> tuple[dict[str, Any], datetime | None]:
    """A change document as the event's payload (see docs/inputs.md), and the event's time."""
    payload: dict[str, Any] = {"operation": change.get("operationType")}
    if (ns := change.get("ns")) is not None:  # an invalidate has none
        payload["namespace"] = dict(ns)
    if (to := change.get("to")) is not None:
        payload["to"] = dict(to)
    if (key := change.get("documentKey")) is not None:
        payload["document_key"] = to_json(key, mode)
    if (document := change.get("fullDocument")) is not None:
        payload["full_document"] = to_json(document, mode)
    if (before := change.get("fullDocumentBeforeChange")) is not None:
        payload["full_document_before_change"] = to_json(before, mode)
    if (update := change.get("updateDescription")) is not None:
        description = {
            "updated_fields": to_json(update.get("updatedFields") or {}, mode),
            "removed_fields": list(update.get("removedFields") or []),
        }
        if (truncated := update.get("truncatedArrays")) is not None:
            description["truncated_arrays"] = to_json(truncated, mode)
        if (paths := update.get("disambiguatedPaths")) is not None:
            description["disambiguated_paths"] = to_json(paths, mode)
        payload["update_description"] = description
    event_time: datetime | None = None
    cluster_time = change.get("clusterTime")
    if isinstance(cluster_time, datetime):
        # Not MongoDB: a server that sends a date here (nx-27017 does) gets it to the second, increment 0.
        event_time = cluster_time if cluster_time.tzinfo else cluster_time.replace(tzinfo=UTC)
        payload["cluster_time"] = {"t": int(event_time.timestamp()), "i": 0}
    elif cluster_time is not None:  # bson.Timestamp
        payload["cluster_time"] = {"t": cluster_time.time, "i": cluster_time.inc}
        event_time = datetime.fromtimestamp(cluster_time.time, UTC)
    wall_time = change.get("wallTime")
    if isinstance(wall_time, datetime):
        event_time = wall_time if wall_time.tzinfo else wall_time.replace(tzinfo=UTC)
        payload["wall_time"] = event_time.isoformat().replace("+00:00", "Z")
    token = change["_id"]
    data = token.get("_data")
    # A current server's token is {"_data": "<hex>"}: plain JSON already.
    payload["resume_token"] = {"_data": data} if type(data) is str and len(token) == 1 else to_json(token, mode)
    return payload, event_time




def read_event_id(snapshot_token: Mapping[str, Any], document_id: Any) -> str:
    """The id of a snapshot document's ``read`` event: the same when the same snapshot is read again."""
    key = msgspec.json.encode(to_json(document_id, "canonical")).decode()
    return _uuid5(f"read/{token_text(snapshot_token)}/{key}")


def read_payload(
    document: Mapping[str, Any], namespace: dict[str, Any], snapshot_token: Any, mode: JsonMode = "relaxed"
) -> dict[str, Any]:
    """A snapshot document as a ``read`` event's payload (``snapshot_token``: already as JSON)."""
    return {
        "operation": "read",
        "namespace": namespace,
        "document_key": {"_id": to_json(document.get("_id"), mode)},
        "full_document": to_json(document, mode),
        "snapshot_token": snapshot_token,
    }
