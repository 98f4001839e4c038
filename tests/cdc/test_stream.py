"""postgres_cdc: changes as events, types, resumption, errors (a throwaway cluster, both backends)."""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from tests.cdc.conftest import Database, leaves, wait_lines
from tests.support import ROOT, running

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def pipeline(dsn: str, *, tables: str = "[public.items]", extra: str = "", sink: str = "out.jsonl") -> str:
    return f"""
name: cdc
inputs:
  db:
    type: postgres_cdc
    dsn: {dsn}
    tables: {tables}
    slot: s1
    publication: p1
    create: true
    status_interval: 0.2
{extra}
sinks:
  out: {{type: file, path: {sink}, route: all}}
"""


async def test_insert_update_delete_truncate(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, qty int)")
    async with running(pipeline(db.dsn), tmp_path):
        await db.execute("INSERT INTO items VALUES (1, 'a', 10), (2, 'b', 20)")
        await db.execute("UPDATE items SET qty = 11 WHERE id = 1")
        await db.execute("UPDATE items SET id = 3 WHERE id = 2")
        await db.execute("DELETE FROM items WHERE id = 1")
        await db.execute("TRUNCATE items")
        lines = await wait_lines(tmp_path / "out.jsonl", 6)
    payloads = [line["payload"] for line in lines]
    assert all(line["valid"] for line in lines), lines[0].get("errors")
    assert [(p["op"], p["after"], p["before"]) for p in payloads] == [
        ("insert", {"id": 1, "name": "a", "qty": 10}, None),
        ("insert", {"id": 2, "name": "b", "qty": 20}, None),
        ("update", {"id": 1, "name": "a", "qty": 11}, None),
        ("update", {"id": 3, "name": "b", "qty": 20}, {"id": 2}),
        ("delete", None, {"id": 1}),
        ("truncate", None, None),
    ]
    first = lines[0]
    assert first["protocol"] == "postgres_cdc"
    assert first["schema"] == "iglu:io.streamer/change/jsonschema/1-0-0"
    assert payloads[0]["table"] == "public.items" and payloads[0]["key"] == ["id"]
    assert payloads[0]["xid"] == payloads[1]["xid"] and payloads[0]["commit_lsn"] == payloads[1]["commit_lsn"]
    assert payloads[0]["commit_time"].endswith("Z")
    assert first["source"]["metadata"]["commit_lsn"] == payloads[0]["commit_lsn"]
    assert len({line["id"] for line in lines}) == 6


async def test_every_type(db: Database, tmp_path: Path) -> None:
    await db.execute(
        """CREATE TABLE typed (
            id bigint PRIMARY KEY, i2 smallint, i4 int, f8 float8, n numeric, b bool, t text, v varchar(10),
            j json, jb jsonb, ts timestamp, tz timestamptz, d date, u uuid, by bytea,
            ai int[], at text[], an numeric[], aj jsonb[], a2 int[][], big text);
            ALTER TABLE typed ALTER COLUMN big SET STORAGE EXTERNAL"""
    )
    extra = "    numeric: string"
    async with running(pipeline(db.dsn, tables="[public.typed]", extra=extra), tmp_path):
        await db.execute(
            """INSERT INTO typed VALUES (9000000000, -2, 7, 1.5, 12345678901234567890.123, true, 'x''y', 'vc',
            '{"a": [1, 2]}', '{"b": null}', '2026-12-04 10:11:12.5', '2026-12-04 10:11:12.123456+02',
            '2026-12-04', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10',
            '{1,NULL,3}', '{"a b","c\\"d",NULL,"NULL"}', '{1.5,2}', ARRAY['{"k": 1}'::jsonb], '{{1,2},{3,4}}',
            repeat('z', 100000))"""
        )
        await db.execute("INSERT INTO typed (id) VALUES (1)")
        await db.execute("UPDATE typed SET i4 = 8 WHERE id = 9000000000")  # big is TOASTed and unchanged
        await db.execute("ALTER TABLE typed REPLICA IDENTITY FULL")
        await db.execute("DELETE FROM typed WHERE id = 1")
        lines = await wait_lines(tmp_path / "out.jsonl", 4)
    assert all(line["valid"] for line in lines), [line["errors"] for line in lines]
    row = lines[0]["payload"]["after"]
    assert row == {
        "id": 9000000000, "i2": -2, "i4": 7, "f8": 1.5, "n": "12345678901234567890.123", "b": True,
        "t": "x'y", "v": "vc", "j": {"a": [1, 2]}, "jb": {"b": None}, "ts": "2026-12-04T10:11:12.5",
        "tz": "2026-12-04T08:11:12.123456Z", "d": "2026-12-04", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "by": "AP8Q", "ai": [1, None, 3], "at": ["a b", 'c"d', None, "NULL"], "an": ["1.5", "2"],
        "aj": [{"k": 1}], "a2": [[1, 2], [3, 4]], "big": "z" * 100000,
    }  # fmt: skip
    nulls = lines[1]["payload"]["after"]
    assert nulls["id"] == 1 and all(value is None for key, value in nulls.items() if key != "id")
    update = lines[2]["payload"]
    assert update["op"] == "update" and update["after"]["i4"] == 8
    assert "big" not in update["after"] and update["unchanged"] == ["big"]
    delete = lines[3]["payload"]
    assert delete["op"] == "delete" and delete["before"]["id"] == 1 and set(delete["before"]) == set(row)


async def test_numeric_as_number(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, n numeric, m numeric)")
    async with running(pipeline(db.dsn, extra="    numeric: number"), tmp_path):
        await db.execute("INSERT INTO items VALUES (1, 2.5, 'NaN'), (2, 7, NULL)")
        lines = await wait_lines(tmp_path / "out.jsonl", 2)
    assert [line["payload"]["after"] for line in lines] == [
        {"id": 1, "n": 2.5, "m": "NaN"},
        {"id": 2, "n": 7, "m": None},
    ]


async def test_resumes_where_the_sinks_stopped(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    out = tmp_path / "out.jsonl"
    async with running(pipeline(db.dsn), tmp_path):
        await db.execute("INSERT INTO items SELECT generate_series(1, 5)")
        await wait_lines(out, 5)
    # Stopped cleanly: every settled change is confirmed; changes made meanwhile come on restart, once.
    await db.execute("INSERT INTO items SELECT generate_series(6, 8)")
    async with running(pipeline(db.dsn), tmp_path):
        await db.execute("INSERT INTO items VALUES (9)")
        lines = await wait_lines(out, 9)
        await anyio.sleep(0.5)
    lines = await wait_lines(out, 9)
    assert [line["payload"]["after"]["id"] for line in lines] == list(range(1, 10))


async def test_a_missing_slot_without_create_is_a_clear_error(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION p1 FOR TABLE items")
    text = pipeline(db.dsn).replace("create: true", "create: false")
    with pytest.raises(Exception) as caught:
        async with running(text, tmp_path):
            pass
    message = " ".join(str(error) for error in leaves(caught.value))
    assert "replication slot 's1' does not exist" in message
    assert "pg_create_logical_replication_slot('s1', 'pgoutput')" in message


async def test_a_missing_publication_without_create_is_a_clear_error(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    text = pipeline(db.dsn).replace("create: true", "create: false")
    with pytest.raises(Exception) as caught:
        async with running(text, tmp_path):
            pass
    message = " ".join(str(error) for error in leaves(caught.value))
    assert 'publication \'p1\' does not exist: run `CREATE PUBLICATION p1 FOR TABLE "public"."items";`' in message


async def test_a_change_reaches_the_sink_within_a_second_of_its_commit(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    out = tmp_path / "out.jsonl"
    async with running(pipeline(db.dsn), tmp_path):
        await anyio.sleep(1)  # idle
        for expected in range(1, 4):
            committed = time.monotonic()
            await db.execute(f"INSERT INTO items VALUES ({expected})")
            await wait_lines(out, expected, timeout=5)
            latency = time.monotonic() - committed
            print(f"latency={latency * 1000:.0f}ms")
            assert latency < 1.0


async def test_the_shipped_pipeline(db: Database, tmp_path: Path) -> None:
    await db.execute(
        "CREATE TABLE orders (id int PRIMARY KEY, total numeric); CREATE TABLE customers (id int PRIMARY KEY);"
        "INSERT INTO orders VALUES (1, 9.5)"
    )
    text = (ROOT / "pipelines" / "postgres-cdc.yml").read_text()
    environ = {"POSTGRES_DSN": db.dsn, "CDC_TABLES": "public.orders,customers", "CDC_SLOT": "shipped"}
    out = tmp_path / "out" / "changes.jsonl"
    async with running(text, tmp_path, environ):
        await wait_lines(out, 1)
        await db.execute("INSERT INTO customers VALUES (7); DELETE FROM orders")
        lines = await wait_lines(out, 3)
    assert [(line["payload"]["op"], line["payload"]["table"]) for line in lines] == [
        ("read", "public.orders"),
        ("insert", "public.customers"),
        ("delete", "public.orders"),
    ]
    assert all(line["valid"] and line["tags"] == {"pipeline": "postgres-cdc"} for line in lines)
    assert await db.value("SELECT slot_name FROM pg_replication_slots") == "shipped"
