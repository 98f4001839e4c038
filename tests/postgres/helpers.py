"""Building postgres sinks and reading their tables back, independently of the sink's own code."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from streamer.core.components import BatchEncoder, Context
from streamer.core.envelope import Envelope
from streamer.core.registry import SchemaResolver
from streamer.postgres.sink import PostgresSink, PostgresSinkSpec

JSON_COLUMNS = ("source", "payload", "contexts", "atomic", "errors", "tags")


def make_sink(dsn: str, table: str, **fields: Any) -> PostgresSink:
    spec = msgspec.convert({"type": "postgres", "dsn": dsn, "table": table, **fields}, PostgresSinkSpec)
    context = Context(pipeline="test", backend="asyncio", resolver=SchemaResolver([]), base_dir=Path.cwd())
    return PostgresSink("pg", spec, context)


async def write(sink: PostgresSink, envelopes: list[Envelope]) -> None:
    await sink.write(BatchEncoder(sink.encoding).batch(envelopes))


def as_json(value: Any) -> Any:
    """A column value as the envelope's JSON has it: jsonb (text from asyncpg) parsed, times and ids as text."""
    if isinstance(value, datetime):
        return msgspec.json.decode(msgspec.json.encode(value))
    if hasattr(value, "hex") and type(value).__name__ == "UUID":
        return str(value)
    return value


async def read_rows(db: Any, table: str) -> list[dict[str, Any]]:
    """Every row of ``table``, each column as JSON would hold it (jsonb columns parsed)."""
    rows = await db.fetch(f'SELECT * FROM "{table}"')
    types = {
        r["attname"]: r["typname"]
        for r in await db.fetch(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = $1::regclass AND a.attnum > 0",
            f'"{table}"',
        )
    }
    out = []
    for row in rows:
        item = {}
        for name, value in row.items():
            if types[name] in ("jsonb", "json") and value is not None:
                value = json.loads(value)
            item[name] = as_json(value)
        out.append(item)
    return out
