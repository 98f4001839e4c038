"""The event a change becomes, and the BSON -> JSON rule, on change documents as MongoDB documents them.

nx-27017 sends no `replace`, `drop`, `rename` or `invalidate` changes, no `updateDescription` and a date as
`clusterTime`; these tests give the conversion the documents a MongoDB server sends (the shapes of the
change events reference), built with bson's own types. They test pure functions: no server involved.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import jsonschema
import pytest

from streamer.mongo.bson_json import to_json
from streamer.mongo.errors import is_history_lost, is_transient
from streamer.mongo.events import EVENT_ID_NAMESPACE, change_event_id, change_payload
from streamer.mongo.schema import change_schema_document

bson = pytest.importorskip("bson")
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp  # noqa: E402

OID = ObjectId("6b13075bbb871c84096a80d7")
TOKEN = {"_data": "8267A1B2C3000000012B022C0100296E5A1004"}
WHEN = datetime(2026, 12, 4, 18, 30, 39, 230000, tzinfo=UTC)


def change(**fields: Any) -> dict[str, Any]:
    return {
        "_id": TOKEN,
        "clusterTime": Timestamp(1796409039, 7),
        "wallTime": WHEN,
        "ns": {"db": "app", "coll": "orders"},
        **fields,
    }


def valid(payload: dict[str, Any]) -> bool:
    return bool(jsonschema.Draft7Validator(change_schema_document()).is_valid(payload))


def test_bson_values_become_extended_json_relaxed() -> None:
    document = {
        "_id": OID,
        "total": Decimal128("12.30"),
        "at": datetime(2026, 1, 2, 3, 4, 5, 123000, tzinfo=UTC),
        "blob": Binary(b"abc", 0),
        "uuid": Binary(uuid.UUID("12345678-1234-5678-1234-567812345678").bytes, 4),
        "count": Int64(5),
        "nan": float("nan"),
        "nested": [{"x": OID}],
    }
    assert to_json(document) == {
        "_id": {"$oid": "6b13075bbb871c84096a80d7"},
        "total": {"$numberDecimal": "12.30"},
        "at": {"$date": "2026-01-02T03:04:05.123Z"},
        "blob": {"$binary": {"base64": "YWJj", "subType": "00"}},
        "uuid": {"$binary": {"base64": "EjRWeBI0VngSNFZ4EjRWeA==", "subType": "04"}},
        "count": 5,
        "nan": {"$numberDouble": "NaN"},
        "nested": [{"x": {"$oid": "6b13075bbb871c84096a80d7"}}],
    }
    canonical = to_json({"count": Int64(5), "n": 1, "at": datetime(1970, 1, 1, tzinfo=UTC)}, "canonical")
    assert canonical == {"count": {"$numberLong": "5"}, "n": {"$numberInt": "1"}, "at": {"$date": {"$numberLong": "0"}}}


def test_an_update_with_its_description() -> None:
    payload, when = change_payload(
        change(
            operationType="update",
            documentKey={"_id": OID},
            updateDescription={
                "updatedFields": {"qty": 3, "at": WHEN},
                "removedFields": ["note"],
                "truncatedArrays": [{"field": "items", "newSize": 2}],
            },
        )
    )
    assert payload == {
        "operation": "update",
        "namespace": {"db": "app", "coll": "orders"},
        "document_key": {"_id": {"$oid": str(OID)}},
        "update_description": {
            "updated_fields": {"qty": 3, "at": {"$date": "2026-12-04T18:30:39.230Z"}},
            "removed_fields": ["note"],
            "truncated_arrays": [{"field": "items", "newSize": 2}],
        },
        "cluster_time": {"t": 1796409039, "i": 7},
        "wall_time": "2026-12-04T18:30:39.230000Z",
        "resume_token": TOKEN,
    }
    assert when == WHEN
    assert valid(payload)


def test_replace_delete_with_pre_images_rename_drop_and_invalidate() -> None:
    replace, _ = change_payload(
        change(operationType="replace", documentKey={"_id": OID}, fullDocument={"_id": OID, "qty": 1})
    )
    assert replace["operation"] == "replace" and replace["full_document"] == {"_id": {"$oid": str(OID)}, "qty": 1}
    delete, _ = change_payload(
        change(operationType="delete", documentKey={"_id": OID}, fullDocumentBeforeChange={"_id": OID, "qty": 1})
    )
    assert "full_document" not in delete
    assert delete["full_document_before_change"] == {"_id": {"$oid": str(OID)}, "qty": 1}
    rename, _ = change_payload(change(operationType="rename", to={"db": "app", "coll": "orders_old"}))
    assert rename["to"] == {"db": "app", "coll": "orders_old"}
    drop, _ = change_payload(change(operationType="drop"))
    invalidate, _ = change_payload({"_id": TOKEN, "operationType": "invalidate", "clusterTime": Timestamp(1, 1)})
    assert invalidate == {
        "operation": "invalidate",
        "cluster_time": {"t": 1, "i": 1},
        "resume_token": TOKEN,
    }
    for payload in (replace, delete, rename, drop, invalidate):
        assert valid(payload), payload


def test_event_ids_follow_the_resume_token() -> None:
    assert change_event_id(TOKEN) == change_event_id(dict(TOKEN))
    assert change_event_id(TOKEN) != change_event_id({"_data": TOKEN["_data"] + "00"})
    assert uuid.UUID(change_event_id(TOKEN)).version == 5
    assert change_event_id(TOKEN) == str(uuid.uuid5(EVENT_ID_NAMESPACE, "change/" + TOKEN["_data"]))


def test_server_errors_are_classified() -> None:
    from pymongo.errors import AutoReconnect, OperationFailure

    lost = OperationFailure(
        "Executor error during getMore :: caused by :: Resume of change stream was not possible, as the resume "
        "point may no longer be in the oplog.",
        code=286,
    )
    assert is_history_lost(lost) and not is_transient(lost)
    not_found = OperationFailure("cannot resume stream; the resume token was not found.", code=280)
    assert is_history_lost(not_found)
    assert is_transient(AutoReconnect("connection closed"))
    assert is_transient(OperationFailure("not primary", code=10107))
    assert is_transient(OperationFailure("x", code=1, details={"errorLabels": ["ResumableChangeStreamError"]}))
    assert not is_transient(OperationFailure("$match is not allowed", code=40324))
    assert not is_transient(OperationFailure("not authorized", code=13))


def test_where_a_run_starts() -> None:
    from pathlib import Path

    from streamer.core.components import Context
    from streamer.mongo.change_stream import MongoChangeStreamInput, MongoChangeStreamSpec
    from streamer.mongo.tokens import ResumeState, TokenStoreSpec

    def start(**options: Any) -> dict[str, Any]:
        spec = MongoChangeStreamSpec(
            uri="mongodb://h", token_store=TokenStoreSpec(type="file", path="t.json"), **options
        )
        context = Context(pipeline="p", backend="asyncio", resolver=None, base_dir=Path("/tmp"))  # type: ignore[arg-type]
        return MongoChangeStreamInput("i", spec, context)._start_options(saved)

    saved = None
    assert start() == {}  # now
    moment = datetime(2026, 12, 4, 1, 2, 3, tzinfo=UTC)
    assert start(start_at_operation_time=moment) == {"start_at_operation_time": Timestamp(int(moment.timestamp()), 0)}
    saved = ResumeState(token=TOKEN, snapshot="done")
    assert start(start_at_operation_time=moment) == {"start_after": TOKEN}  # a saved token wins
