"""BSON values as JSON: MongoDB Extended JSON v2, relaxed (the default) or canonical.

The rule, applied to every document, key and update a change carries:

==================  ==========================================  =========================================
BSON                relaxed (default)                           canonical
==================  ==========================================  =========================================
string, bool, null  as is                                       as is
int32, int64        a JSON number                               ``{"$numberInt": "5"}``, ``{"$numberLong": "5"}``
double              a JSON number; NaN and infinities as        ``{"$numberDouble": "1.5"}``
                    ``{"$numberDouble": "NaN"}``
ObjectId            ``{"$oid": "6b13...a80d7"}``                the same
date                ``{"$date": "2026-01-02T03:04:05.123Z"}``   ``{"$date": {"$numberLong": "<ms>"}}``
                    (ISO 8601, UTC, milliseconds); before 1970
                    or after 9999: ``{"$date": {"$numberLong":
                    "<ms since the epoch>"}}``
Decimal128          ``{"$numberDecimal": "1.10"}``              the same
binary (UUID too)   ``{"$binary": {"base64": "YWJj",             the same
                    "subType": "00"}}``
timestamp           ``{"$timestamp": {"t": 5, "i": 6}}``        the same
regex, code, min/   their Extended JSON v2 forms                the same
max key, DBRef
==================  ==========================================  =========================================

This is what ``bson.json_util`` produces with ``RELAXED_JSON_OPTIONS`` / ``CANONICAL_JSON_OPTIONS``
(the values that are not plain JSON are handed to ``json_util.default``): a document converted this
way goes back to the same BSON with ``json_util.loads``. Relaxed mode is walked here without a JSON
round trip, as plain JSON values are by far the most common.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

__all__ = ["JsonMode", "to_json"]

JsonMode = Literal["relaxed", "canonical"]


def to_json(value: Any, mode: JsonMode = "relaxed") -> Any:
    """``value`` (a document as pymongo decoded it) as JSON-ready Python values, by the rule above."""
    if mode == "canonical":
        from bson import json_util

        return json.loads(json_util.dumps(value, json_options=json_util.CANONICAL_JSON_OPTIONS))
    if _BSON is None:
        _load_bson()
    return _relaxed(value, _default, _RELAXED)


_BSON: Any = None
_OBJECT_ID: Any = None
_RELAXED: Any = None


def _load_bson() -> None:
    # Imported once, on first use (the spec modules must not need bson), then read from globals.
    global _BSON, _OBJECT_ID, _RELAXED
    from bson import ObjectId, json_util

    _OBJECT_ID = ObjectId
    _RELAXED = json_util.RELAXED_JSON_OPTIONS
    _BSON = json_util


def _default(value: Any, options: Any) -> Any:
    """``json_util.default``, with the most common BSON type (ObjectId) first: it costs ~4x this there."""
    if type(value) is _OBJECT_ID:
        return {"$oid": str(value)}
    return _BSON.default(value, options)


def _relaxed(value: Any, default: Any, options: Any) -> Any:
    kind = type(value)
    if kind is dict:
        out = {}
        for key, item in value.items():
            item_kind = type(item)
            # Plain JSON values (most of a document) are taken as they are, without a call.
            if item_kind is str or item_kind is int or item_kind is bool or item is None:
                out[key] = item
            else:
                out[key] = _relaxed(item, default, options)
        return out
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is list:
        return [_relaxed(item, default, options) for item in value]
    if kind is float:
        return value if math.isfinite(value) else default(value, options)
    if isinstance(value, dict):  # SON and other mappings
        return {key: _relaxed(item, default, options) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relaxed(item, default, options) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):  # Int64
        return int(value)
    converted = default(value, options)
    # DBRef and Code with scope come back as mappings that may hold BSON values themselves.
    return _relaxed(converted, default, options) if isinstance(converted, dict) else converted
