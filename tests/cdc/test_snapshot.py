"""postgres_cdc with snapshot: initial: existing rows as op: read, then the stream; an interrupted
snapshot is redone from the start."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from tests.cdc.conftest import Database, wait_lines
from tests.support import running, sink

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def pipeline(dsn: str, sink_yaml: str = "{type: file, path: out.jsonl, route: all}") -> str:
    return f"""
name: cdc
inputs:
  db:
    type: postgres_cdc
    dsn: {dsn}
    tables: [public.items, public.empty]
    slot: s1
    publication: p1
    create: true
    snapshot: initial
    chunk_size: 1000
    max_in_flight: 2
    status_interval: 0.1
sinks:
  out: {sink_yaml}
"""


async def test_existing_rows_then_the_stream(db: Database, tmp_path: Path) -> None:
    await db.execute(
        "CREATE TABLE items (id int PRIMARY KEY, v text); CREATE TABLE empty (id int PRIMARY KEY);"
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 2500) g"
    )
    async with running(pipeline(db.dsn), tmp_path):
        await wait_lines(tmp_path / "out.jsonl", 2500)
        await db.execute("INSERT INTO items VALUES (0, 'new'); UPDATE items SET v = 'changed' WHERE id = 1")
        lines = await wait_lines(tmp_path / "out.jsonl", 2502)
    reads = [line["payload"] for line in lines[:2500]]
    assert all(line["valid"] for line in lines)
    assert {p["op"] for p in reads} == {"read"}
    assert sorted(p["after"]["id"] for p in reads) == list(range(1, 2501))
    assert reads[0]["key"] == ["id"] and reads[0]["table"] == "public.items"
    assert [(p["op"], p["after"]) for p in (line["payload"] for line in lines[2500:])] == [
        ("insert", {"id": 0, "v": "new"}),
        ("update", {"id": 1, "v": "changed"}),
    ]
    assert len({line["id"] for line in lines}) == 2502
    assert await db.value("SELECT count(*) FROM pg_replication_slots") == "1"


async def test_an_interrupted_snapshot_is_redone(db: Database, tmp_path: Path) -> None:
    await db.execute(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE empty (id int PRIMARY KEY);"
        "INSERT INTO items SELECT generate_series(1, 5000)"
    )
    async with running(pipeline(db.dsn, "{type: controlled, route: all}"), tmp_path) as pipe:
        controlled = sink(pipe, "out")
        controlled.block()
        with anyio.fail_after(10):
            await controlled.waiting.wait()
        pipe.stop()  # mid-snapshot: one unit written at most, the rest never read
        controlled.release()
    assert len(controlled.lines) < 5000
    # No slot: the temporary one died with its connection, the permanent one was never made.
    assert await db.value("SELECT count(*) FROM pg_replication_slots") == "0"
    await db.execute("INSERT INTO items VALUES (0)")
    async with running(pipeline(db.dsn), tmp_path):
        lines = await wait_lines(tmp_path / "out.jsonl", 5001)
        await db.execute("INSERT INTO items VALUES (-1)")
        lines = await wait_lines(tmp_path / "out.jsonl", 5002)
    assert sorted(line["payload"]["after"]["id"] for line in lines[:5001]) == list(range(5001))
    assert lines[-1]["payload"]["op"] == "insert" and lines[-1]["payload"]["after"] == {"id": -1}
