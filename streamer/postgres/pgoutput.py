"""Decoding of the ``pgoutput`` logical replication messages into row changes.

PostgreSQL's built-in output plugin (nothing to install on the server) sends, per transaction,
Begin, then Relation and Type messages describing what follows, one Insert/Update/Delete per row,
Truncate, Message and Origin messages, and Commit. Protocol version 2 adds streamed transactions
(Stream Start/Stop/Commit/Abort), whose row messages carry the transaction id.

Values arrive in their text form (the session's DateStyle ISO, TimeZone UTC, hex ``bytea``) and are
converted by type OID:

======================================== ===================================================
type                                     value
======================================== ===================================================
int2, int4, int8, oid                    integer
float4, float8                           number (``NaN`` and infinities: a string)
numeric                                  string (exact), or a number with ``numeric: number``
bool                                     true / false
text, varchar, char, name, enum, ...     string (every type not listed here, as PostgreSQL prints it)
json, jsonb                              the JSON value
timestamp                                ``2026-12-04T10:11:12.123456`` (ISO 8601, no zone)
timestamptz                              ``2026-12-04T10:11:12.123456Z`` (ISO 8601, UTC)
date, time, timetz, uuid, interval       string, as PostgreSQL prints it (intervals in ISO 8601)
bytea                                    base64
arrays of the above                      a (nested) list; NULL elements as null
======================================== ===================================================

NULL is ``null``. An unchanged TOASTed value (an update that did not touch a large column, without
``REPLICA IDENTITY FULL``) is not sent by the server: the column is left out of ``after`` and named
in the change's ``unchanged`` list.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any, Literal

import msgspec

__all__ = [
    "Begin",
    "Change",
    "Commit",
    "Decoder",
    "LogicalMessage",
    "Origin",
    "Relation",
    "StreamAbort",
    "StreamCommit",
    "StreamStart",
    "StreamStop",
    "Truncate",
    "TypeMessage",
    "converter_for",
    "parse_array",
]

Convert = Callable[[str], Any]
NumericMode = Literal["string", "number"]

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_i32 = _I32.unpack_from
_u32 = _U32.unpack_from
_I16 = struct.Struct("!h")
_BEGIN = struct.Struct("!Qqi")
_COMMIT = struct.Struct("!BQQq")
_STREAM_COMMIT = struct.Struct("!iBQQq")


# --- values -------------------------------------------------------------------------------------------


def _bool(text: str) -> bool:
    return text == "t"


def _float(text: str) -> float | str:
    value = float(text)
    return value if value - value == 0 else text  # NaN and infinities have no JSON number


def _number(text: str) -> int | float | str:
    if text in ("NaN", "Infinity", "-Infinity"):
        return text
    if "." in text or "e" in text or "E" in text:
        return float(text)
    return int(text)


_json_decode = msgspec.json.decode


def _json(text: str) -> Any:
    return _json_decode(text)


def _timestamp(text: str) -> str:
    # "2026-12-04 10:11:12.5" -> "2026-12-04T10:11:12.5"; "infinity" and BC dates stay as printed.
    return text.replace(" ", "T", 1) if text[0].isdigit() and not text.endswith("BC") else text


def _timestamptz(text: str) -> str:
    # With TimeZone=UTC the server prints "+00"; ISO 8601 writes it "Z".
    if text.endswith("+00") and text[0].isdigit():
        return text[:-3].replace(" ", "T", 1) + "Z"
    return _timestamp(text)


def _bytea(text: str) -> str:
    return base64.b64encode(bytes.fromhex(text[2:])).decode("ascii")


def _text(text: str) -> str:
    return text


_SCALARS: dict[int, Convert] = {
    16: _bool,
    17: _bytea,
    20: int,
    21: int,
    23: int,
    26: int,
    700: _float,
    701: _float,
    114: _json,
    3802: _json,
    1114: _timestamp,
    1184: _timestamptz,
}

_ARRAYS: dict[int, int] = {
    1000: 16,
    1001: 17,
    1005: 21,
    1007: 23,
    1016: 20,
    1028: 26,
    1021: 700,
    1022: 701,
    1231: 1700,
    199: 114,
    3807: 3802,
    1115: 1114,
    1185: 1184,
    1009: 25,
    1015: 1043,
    1014: 1042,
    1182: 1082,
    1183: 1083,
    2951: 2950,
    1187: 1186,
}


def converter_for(type_oid: int, numeric: NumericMode = "string") -> Convert:
    """How a value of type ``type_oid`` in its text form becomes a JSON value."""
    if type_oid == 1700:
        return _number if numeric == "number" else _text
    scalar = _SCALARS.get(type_oid)
    if scalar is not None:
        return scalar
    element = _ARRAYS.get(type_oid)
    if element is not None:
        convert = converter_for(element, numeric)
        return lambda text: parse_array(text, convert)
    return _text


def parse_array(text: str, convert: Convert = _text) -> Any:
    """A PostgreSQL array literal (``{1,2,NULL}``, ``{{"a b",c},{d,e}}``, ``[0:1]={...}``) as nested lists,
    each element passed through ``convert`` (``NULL`` -> ``None``)."""
    if text.startswith("["):  # explicit bounds: "[0:1]={...}"
        text = text[text.index("=") + 1 :]
    value, _ = _parse_array(text, 0, convert)
    return value


def _parse_array(text: str, position: int, convert: Convert) -> tuple[list[Any], int]:
    # text[position] == "{"
    out: list[Any] = []
    position += 1
    length = len(text)
    while position < length:
        char = text[position]
        if char == "}":
            return out, position + 1
        if char == ",":
            position += 1
            continue
        if char == "{":
            inner, position = _parse_array(text, position, convert)
            out.append(inner)
        elif char == '"':
            position += 1
            chunks: list[str] = []
            start = position
            while True:
                char = text[position]
                if char == "\\":
                    chunks.append(text[start:position])
                    chunks.append(text[position + 1])
                    position += 2
                    start = position
                elif char == '"':
                    chunks.append(text[start:position])
                    position += 1
                    break
                else:
                    position += 1
            out.append(convert("".join(chunks)))
        else:
            start = position
            while text[position] not in ",}":
                position += 1
            item = text[start:position].strip()
            out.append(None if item == "NULL" else convert(item))
    raise ValueError(f"unterminated array literal: {text[:80]!r}")


# --- messages -------------------------------------------------------------------------------------------


class Relation:
    """A table as a Relation message describes it; cached by OID until the next Relation for it."""

    __slots__ = (
        "columns",
        "converters",
        "fields",
        "identity",
        "key",
        "name",
        "namespace",
        "oid",
        "table",
        "types",
    )

    def __init__(
        self,
        oid: int,
        namespace: str,
        name: str,
        identity: str,
        columns: list[str],
        types: list[int],
        key: list[str],
        numeric: NumericMode,
    ) -> None:
        self.oid = oid
        self.namespace = namespace
        self.name = name
        self.table = f"{namespace}.{name}"
        self.identity = identity
        """Replica identity: ``d`` default (primary key), ``n`` nothing, ``f`` full, ``i`` an index."""
        self.columns = columns
        self.types = types
        self.key = key
        """Columns of the replica identity (the old key an update or delete carries)."""
        self.converters: list[Convert | None] = [
            None if convert is _text else convert for convert in (converter_for(t, numeric) for t in types)
        ]
        """How each column's text becomes a value; ``None`` where it stays the text (no call for it)."""
        self.fields = list(zip(columns, self.converters, strict=True))
        """``(column, converter)`` pairs, for the hot loop."""


class Begin(msgspec.Struct, array_like=True):
    final_lsn: int
    commit_time: int
    """Microseconds since 2000-01-01 UTC."""
    xid: int


class Commit(msgspec.Struct, array_like=True):
    commit_lsn: int
    end_lsn: int
    commit_time: int


class Origin(msgspec.Struct, array_like=True):
    lsn: int
    name: str


class TypeMessage(msgspec.Struct, array_like=True):
    oid: int
    namespace: str
    name: str


class Change:
    """One row changed: ``op`` is ``insert``, ``update`` or ``delete``."""

    __slots__ = ("after", "before", "op", "relation", "unchanged", "xid")

    def __init__(
        self,
        op: str,
        relation: Relation,
        after: dict[str, Any] | None,
        before: dict[str, Any] | None,
        unchanged: list[str] | None,
        xid: int | None,
    ) -> None:
        self.op = op
        self.relation = relation
        self.after = after
        self.before = before
        self.unchanged = unchanged
        self.xid = xid


class Truncate(msgspec.Struct, array_like=True):
    relations: list[Relation]
    cascade: bool
    restart_identity: bool
    xid: int | None


class LogicalMessage(msgspec.Struct, array_like=True):
    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None


class StreamStart(msgspec.Struct, array_like=True):
    xid: int
    first: bool


class StreamStop(msgspec.Struct, array_like=True):
    pass


class StreamCommit(msgspec.Struct, array_like=True):
    xid: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


class StreamAbort(msgspec.Struct, array_like=True):
    xid: int
    subxid: int


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeMessage
    | Change
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
)


class DecodeError(Exception):
    """A message this decoder does not understand (a protocol it was not asked for, or corruption)."""


class Decoder:
    """Turns pgoutput messages into :data:`Message` objects, keeping the relation cache.

    ``decode(data, offset)`` reads one message starting at ``offset`` of ``data`` (25 for an XLogData
    payload). Row values are converted as the module docstring says.
    """

    def __init__(self, numeric: NumericMode = "string") -> None:
        self.numeric: NumericMode = numeric
        self.relations: dict[int, Relation] = {}
        self.types: dict[int, TypeMessage] = {}
        self._in_stream = False

    def decode(self, data: bytes, offset: int = 0) -> Message:
        kind = data[offset]
        position = offset + 1
        if kind == 73:  # "I"
            return self._insert(data, position)
        if kind == 85:  # "U"
            return self._update(data, position)
        if kind == 68:  # "D"
            return self._delete(data, position)
        if kind == 66:  # "B"
            final_lsn, commit_time, xid = _BEGIN.unpack_from(data, position)
            return Begin(final_lsn, commit_time, xid & 0xFFFFFFFF)
        if kind == 67:  # "C"
            _flags, commit_lsn, end_lsn, commit_time = _COMMIT.unpack_from(data, position)
            return Commit(commit_lsn, end_lsn, commit_time)
        if kind == 82:  # "R"
            return self._relation(data, position)
        if kind == 89:  # "Y"
            xid, position = self._xid(data, position)
            (oid,) = _U32.unpack_from(data, position)
            namespace, position = _string(data, position + 4)
            name, position = _string(data, position)
            message = TypeMessage(oid, namespace, name)
            self.types[oid] = message
            return message
        if kind == 84:  # "T"
            xid, position = self._xid(data, position)
            (count,) = _I32.unpack_from(data, position)
            options = data[position + 4]
            oids = struct.unpack_from(f"!{count}I", data, position + 5)
            return Truncate([self._relation_of(oid) for oid in oids], bool(options & 1), bool(options & 2), xid)
        if kind == 77:  # "M"
            xid, position = self._xid(data, position)
            flags = data[position]
            (lsn,) = struct.unpack_from("!Q", data, position + 1)
            prefix, position = _string(data, position + 9)
            (length,) = _I32.unpack_from(data, position)
            content = bytes(data[position + 4 : position + 4 + length])
            return LogicalMessage(bool(flags & 1), lsn, prefix, content, xid)
        if kind == 79:  # "O"
            (lsn,) = struct.unpack_from("!Q", data, position)
            name, _ = _string(data, position + 8)
            return Origin(lsn, name)
        if kind == 83:  # "S"
            (xid,) = _U32.unpack_from(data, position)
            self._in_stream = True
            return StreamStart(xid, data[position + 4] == 1)
        if kind == 69:  # "E"
            self._in_stream = False
            return StreamStop()
        if kind == 99:  # "c"
            xid, _flags, commit_lsn, end_lsn, commit_time = _STREAM_COMMIT.unpack_from(data, position)
            return StreamCommit(xid & 0xFFFFFFFF, commit_lsn, end_lsn, commit_time)
        if kind == 65:  # "A"
            xid, subxid = struct.unpack_from("!II", data, position)
            return StreamAbort(xid, subxid)
        raise DecodeError(f"unknown pgoutput message {chr(kind)!r}")

    # --- parts ------------------------------------------------------------------------------------------

    def _xid(self, data: bytes, position: int) -> tuple[int | None, int]:
        if self._in_stream:
            return _U32.unpack_from(data, position)[0], position + 4
        return None, position

    def _relation_of(self, oid: int) -> Relation:
        relation = self.relations.get(oid)
        if relation is None:
            raise DecodeError(f"row for relation {oid} before its Relation message")
        return relation

    def _relation(self, data: bytes, position: int) -> Relation:
        _xid, position = self._xid(data, position)
        (oid,) = _U32.unpack_from(data, position)
        namespace, position = _string(data, position + 4)
        name, position = _string(data, position)
        identity = chr(data[position])
        (count,) = _I16.unpack_from(data, position + 1)
        position += 3
        columns: list[str] = []
        types: list[int] = []
        key: list[str] = []
        for _ in range(count):
            flags = data[position]
            column, position = _string(data, position + 1)
            (type_oid,) = _U32.unpack_from(data, position)
            position += 8  # type OID, type modifier
            columns.append(column)
            types.append(type_oid)
            if flags & 1:
                key.append(column)
        relation = Relation(oid, namespace or "pg_catalog", name, identity, columns, types, key, self.numeric)
        self.relations[oid] = relation
        return relation

    def insert(self, data: bytes, position: int) -> tuple[Relation, dict[str, Any], list[str] | None]:
        """An Insert message whose body starts at ``position`` (after its "I"), outside a streamed block:
        ``(relation, new row, unchanged TOAST columns)``, without making a :class:`Change`."""
        relation = self.relations.get(_u32(data, position)[0])
        if relation is None or self._in_stream:
            change = self._insert(data, position)
            return change.relation, change.after or {}, change.unchanged
        # The loop of _tuple, for a new row (no old key to filter): this is the hot path.
        first = position + 5  # after the OID and "N": the TupleData
        position = first + 2  # past its column count
        row: dict[str, Any] = {}
        for column, convert in relation.fields:
            if data[position] != 116:  # not text: NULL, unchanged TOAST, binary
                after, unchanged, _ = _tuple(data, first, relation)
                return relation, after, unchanged
            start = position + 5
            position = start + _i32(data, position + 1)[0]
            if convert is None:
                row[column] = data[start:position].decode()
            else:
                row[column] = convert(data[start:position].decode())
        return relation, row, None

    def _insert(self, data: bytes, position: int) -> Change:
        xid, position = self._xid(data, position)
        (oid,) = _U32.unpack_from(data, position)
        relation = self._relation_of(oid)
        after, unchanged, _ = _tuple(data, position + 5, relation)  # + "N"
        return Change("insert", relation, after, None, unchanged, xid)

    def _update(self, data: bytes, position: int) -> Change:
        xid, position = self._xid(data, position)
        (oid,) = _U32.unpack_from(data, position)
        relation = self._relation_of(oid)
        position += 4
        before = None
        if data[position] in (75, 79):  # "K" old key, "O" old row (REPLICA IDENTITY FULL)
            keyed = data[position] == 75
            before, _, position = _tuple(data, position + 1, relation, keyed)
        after, unchanged, _ = _tuple(data, position + 1, relation)  # + "N"
        return Change("update", relation, after, before, unchanged, xid)

    def _delete(self, data: bytes, position: int) -> Change:
        xid, position = self._xid(data, position)
        (oid,) = _U32.unpack_from(data, position)
        relation = self._relation_of(oid)
        keyed = data[position + 4] == 75
        before, _, _ = _tuple(data, position + 5, relation, keyed)
        return Change("delete", relation, None, before, None, xid)


def _string(data: bytes, position: int) -> tuple[str, int]:
    end = data.index(0, position)
    return data[position:end].decode(), end + 1


def _tuple(
    data: bytes, position: int, relation: Relation, keyed: bool = False
) -> tuple[dict[str, Any], list[str] | None, int]:
    """The values of TupleData at ``position``: a dict by column name, the unchanged TOAST columns, where
    it ends. ``keyed``: an old key, whose non-key columns the server sends as null and are left out."""
    position += 2  # the column count: the relation's
    row: dict[str, Any] = {}
    unchanged: list[str] | None = None
    unpack = _I32.unpack_from
    for column, convert in zip(relation.columns, relation.converters, strict=False):
        kind = data[position]
        if kind == 116:  # "t": text
            start = position + 5
            position = start + unpack(data, position + 1)[0]
            text = data[start:position].decode()
            row[column] = text if convert is None else convert(text)
        elif kind == 110:  # "n": NULL
            position += 1
            if not keyed:
                row[column] = None
        elif kind == 117:  # "u": unchanged TOAST value, not sent
            position += 1
            if unchanged is None:
                unchanged = []
            unchanged.append(column)
        elif kind == 98:  # "b": binary (only with the binary option, which is not asked for)
            start = position + 5
            position = start + unpack(data, position + 1)[0]
            row[column] = base64.b64encode(data[start:position]).decode("ascii")
        else:
            raise DecodeError(f"unknown tuple column kind {chr(kind)!r}")
    if keyed and relation.key:
        row = {name: row[name] for name in relation.key if name in row}
    return row, unchanged, position
