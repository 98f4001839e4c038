"""From envelopes to table rows: which envelope paths a column can hold, and how each value is converted.

A column is written from an envelope field (``payload``), a Source field (``source.client_ip``) or a
dotted path into a dict-valued field (``payload.order.total``, ``atomic.aid``, ``tags.team``). Each
path has a *kind* (uuid, timestamp, bool, text, json) that decides the type ``create_table`` gives its
column and the column types it may be written to; once the table's real types are known, each column
gets the conversion its asyncpg codec needs (JSON encoding for jsonb, text for text columns). Rows are
built by :func:`rows_builder`: one C-level ``attrgetter`` per row, then only the conversions needed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from streamer.core.envelope import Envelope

__all__ = [
    "CREATE_TYPES",
    "DEFAULT_COLUMNS",
    "NOT_NULL",
    "WRITABLE",
    "Column",
    "Kind",
    "converter",
    "field_kind",
    "rows_builder",
    "unstorable",
]

Kind = Literal["uuid", "timestamp", "bool", "text", "json"]

_FIELDS: dict[str, Kind] = {
    "id": "uuid",
    "collector_tstamp": "timestamp",
    "event_tstamp": "timestamp",
    "valid": "bool",
    "protocol": "text",
    "schema": "text",
    "schema_vendor": "text",
    "schema_name": "text",
    "schema_format": "text",
    "schema_version": "text",
    "source": "json",
    "payload": "json",
    "contexts": "json",
    "atomic": "json",
    "errors": "json",
    "tags": "json",
    "source.input": "text",
    "source.client_ip": "text",
    "source.user_agent": "text",
    "source.headers": "json",
    "source.metadata": "json",
}
"""Envelope fields (and Source fields) a column can hold, and what kind of value each is."""

_DICT_FIELDS: dict[str, Kind] = {
    "payload": "json",
    "atomic": "json",
    "tags": "text",
    "source.headers": "text",
    "source.metadata": "json",
}
"""Fields whose keys a dotted path may go into (``payload.order.total``), and the kind of what it finds."""

DEFAULT_COLUMNS: dict[str, str] = {name: name for name in _FIELDS if "." not in name}
"""Every envelope field to a column of its own name."""

CREATE_TYPES: dict[Kind, str] = {
    "uuid": "uuid",
    "timestamp": "timestamptz",
    "bool": "boolean",
    "text": "text",
    "json": "jsonb",
}
NOT_NULL = frozenset({"collector_tstamp", "valid", "protocol"})

_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "citext", "name"})
WRITABLE: dict[Kind, frozenset[str]] = {
    "uuid": frozenset({"uuid", "jsonb", "json"}) | _TEXT_TYPES,
    "timestamp": frozenset({"timestamptz", "timestamp", "jsonb", "json"}) | _TEXT_TYPES,
    "bool": frozenset({"bool", "jsonb", "json"}) | _TEXT_TYPES,
    "text": frozenset({"jsonb", "json"}) | _TEXT_TYPES,
    "json": frozenset({"jsonb", "json"}) | _TEXT_TYPES,
}
"""Column types (``pg_type.typname``) each kind of field can be written to."""


def field_kind(path: str) -> Kind:
    """The kind of value at an envelope path; raises ValueError naming what paths exist."""
    kind = _FIELDS.get(path)
    if kind is not None:
        return kind
    for prefix, inner in _DICT_FIELDS.items():
        if path.startswith(prefix + ".") and all(path[len(prefix) + 1 :].split(".")):
            return inner
    raise ValueError(
        f"{path!r} is not an envelope field; use one of {', '.join(n for n in _FIELDS)}, or a dotted path into "
        f"{', '.join(_DICT_FIELDS)} (e.g. payload.order.total)"
    )


class Column:
    """One written column: where its value comes from, how it is converted for the column's type."""

    __slots__ = ("attribute", "convert", "keys", "kind", "name", "path", "type")

    def __init__(self, path: str, name: str) -> None:
        self.path = path
        self.name = name
        self.kind = field_kind(path)
        self.keys: tuple[str, ...] = ()
        if path in _FIELDS:
            self.attribute = path
        else:
            prefix = next(p for p in _DICT_FIELDS if path.startswith(p + "."))
            self.attribute, self.keys = prefix, tuple(path[len(prefix) + 1 :].split("."))
        self.type = CREATE_TYPES[self.kind]
        self.convert: Callable[[Any], Any] | None = None


_encoder = msgspec.json.Encoder()


def _jsonb(value: Any, _encode: Callable[[Any], bytes] = _encoder.encode) -> Any:
    # jsonb's binary form: a version byte, then the JSON text (the sink's connections take jsonb this way).
    return None if value is None else b"\x01" + _encode(value)


def _json_text(value: Any, _encode: Callable[[Any], bytes] = _encoder.encode) -> Any:
    return None if value is None else _encode(value).decode()


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return _json_text(value)


def _naive_utc(value: Any) -> Any:
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)


def converter(kind: Kind, column_type: str) -> Callable[[Any], Any] | None:
    """How a value of ``kind`` becomes what asyncpg's codec for ``column_type`` takes (None: as it is)."""
    if column_type == "jsonb":
        return _jsonb
    if column_type == "json":
        return _json_text
    if column_type in _TEXT_TYPES:
        return None if kind in ("uuid", "text") else _text
    if kind == "timestamp" and column_type == "timestamp":
        return _naive_utc
    return None


def _dig(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    def dig(value: Any) -> Any:
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return dig


def _chain(first: Callable[[Any], Any], then: Callable[[Any], Any] | None) -> Callable[[Any], Any]:
    if then is None:
        return first
    return lambda value: then(first(value))


_SHARED = frozenset({"source", "tags"})
"""Fields whose value is usually one object for many envelopes (an HTTP request's Source, the tags the
annotate processor sets): encoded once per batch for each distinct object."""


def _once_per_object(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    last: Any = None
    out: Any = None

    def convert_once(value: Any) -> Any:
        nonlocal last, out
        if value is not last:
            last, out = value, convert(value)
        return out

    return convert_once


def rows_builder(columns: list[Column]) -> Callable[[list[Envelope]], list[Any]]:
    """A function from envelopes to their rows: one C-level ``attrgetter`` for every column of a row, then
    the conversions only where a column needs one (JSON encoding, a path into a dict)."""
    many = operator.attrgetter(*(c.attribute for c in columns))
    one = operator.attrgetter(columns[0].attribute)
    get: Callable[[Envelope], Any] = many if len(columns) > 1 else (lambda envelope: (one(envelope),))
    steps: list[tuple[int, Callable[[Any], Any], bool]] = []
    for index, column in enumerate(columns):
        convert = column.convert
        if column.keys:
            convert = _chain(_dig(column.keys), convert)
        if convert is not None:
            steps.append((index, convert, column.attribute in _SHARED and not column.keys))

    def rows(envelopes: list[Envelope]) -> list[Any]:
        if not steps:
            return list(map(get, envelopes))
        # Memos live for one batch only: nothing is held (or trusted) from one batch to the next.
        batch_steps = [(i, _once_per_object(c) if shared else c) for i, c, shared in steps]
        out: list[Any] = []
        append = out.append
        for envelope in envelopes:
            values = list(get(envelope))
            for index, convert in batch_steps:
                values[index] = convert(values[index])
            append(values)
        return out

    return rows


def unstorable(rows: list[Any]) -> list[int]:
    """Indexes of the rows holding a value PostgreSQL refuses whatever the column: a NUL character in
    text, or escaped (``\\u0000``) in a jsonb value. Looked for only after a COPY failed on one."""
    bad = []
    for index, row in enumerate(rows):
        for value in row:
            if (isinstance(value, str) and "\x00" in value) or (isinstance(value, bytes) and b"\\u0000" in value):
                bad.append(index)
                break
    return bad
