"""postgres_cdc: large transactions in units, backpressure, the slot's position, quiet tables, DDL."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from streamer.postgres.cdc import PostgresCdcInput
from streamer.postgres.replication import PgConnection, parse_lsn
from tests.cdc.conftest import Database, leaves, wait_lines
from tests.support import running, sink

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def pipeline(dsn: str, *, extra: str = "", sink_yaml: str = "{type: file, path: out.jsonl, route: all}") -> str:
    return f"""
name: cdc
inputs:
  db:
    type: postgres_cdc
    dsn: {dsn}
    tables: [public.items]
    slot: s1
    publication: p1
    create: true
    status_interval: 0.1
{extra}
sinks:
  out: {sink_yaml}
"""


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await predicate():  # noqa: ASYNC110 - polls the database and the input's counters
            await anyio.sleep(0.05)


async def test_a_10000_row_transaction(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
    async with running(pipeline(db.dsn, extra="    chunk_size: 1000"), tmp_path):
        await db.execute("INSERT INTO items SELECT i, repeat('x', 90) FROM generate_series(1, 10000) i")
        lines = await wait_lines(tmp_path / "out.jsonl", 10_000)
        end = parse_lsn(str(await db.value("SELECT pg_current_wal_lsn()")))

        async def confirmed() -> bool:
            return await db.confirmed_flush("s1") >= end  # the commit, then a keepalive past it

        await wait_for(confirmed)
    assert [line["payload"]["after"]["id"] for line in lines] == list(range(1, 10_001))
    assert len({line["payload"]["xid"] for line in lines}) == 1
    assert len({line["id"] for line in lines}) == 10_000


async def test_the_slot_waits_for_the_whole_transaction_and_reading_pauses(db: Database, tmp_path: Path) -> None:
    """With the sink blocked, a 10-unit transaction stops at the window (4 units) and the slot does not move;
    released, everything lands and the slot confirms the commit."""
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    text = pipeline(
        db.dsn,
        extra="    chunk_size: 100\n    max_in_flight: 4",
        sink_yaml="{type: controlled, route: all, delivery: {batch_size: 100, buffer: 64}}",
    )
    async with running(text, tmp_path) as pipe:
        controlled = sink(pipe, "out")
        cdc = pipe.inputs[0]
        assert isinstance(cdc, PostgresCdcInput)
        await db.execute("INSERT INTO items VALUES (0)")

        async def first_settled() -> bool:
            checkpoint = cdc.checkpoint
            return len(controlled.lines) == 1 and checkpoint is not None and checkpoint.in_flight == 0

        await wait_for(first_settled)
        before = await db.confirmed_flush("s1")
        controlled.block()
        await db.execute("INSERT INTO items SELECT generate_series(1, 1000)")

        async def window_full() -> bool:
            return cdc.checkpoint is not None and cdc.checkpoint.in_flight == 4

        await wait_for(window_full)
        await anyio.sleep(0.5)
        assert cdc.checkpoint is not None and cdc.checkpoint.in_flight == 4  # reading paused at the window
        assert cdc.changes <= 1 + 5 * 100  # 4 units in flight, the fifth waiting to be tracked
        blocked_at = await db.confirmed_flush("s1")
        assert blocked_at >= before
        controlled.release()

        async def all_written() -> bool:
            return len(controlled.lines) == 1001

        await wait_for(all_written)
        # While its units were unsettled, the slot stayed before the transaction's commit (confirming WAL
        # inside the transaction's range is fine: the server resends every transaction committed after it).
        commit = parse_lsn(json.loads(controlled.lines[-1])["payload"]["commit_lsn"])
        assert blocked_at < commit
        end = parse_lsn(str(await db.value("SELECT pg_current_wal_lsn()")))

        async def confirmed() -> bool:
            return await db.confirmed_flush("s1") >= end

        await wait_for(confirmed)


async def test_quiet_tables_do_not_pin_wal(db: Database, tmp_path: Path) -> None:
    """Only an unwatched table is written to: the slot's confirmed_flush_lsn still moves past that WAL."""
    await db.execute("CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY, t text)")
    async with running(pipeline(db.dsn), tmp_path):

        async def slot_ready() -> bool:
            return await db.confirmed_flush("s1") > 0

        await wait_for(slot_ready)
        start = await db.confirmed_flush("s1")
        for batch in range(20):
            await db.execute(
                f"INSERT INTO other SELECT g, repeat('y', 500) FROM generate_series({batch * 100}, "
                f"{batch * 100 + 99}) g"
            )
        written = parse_lsn(str(await db.value("SELECT pg_current_wal_lsn()")))
        assert written - start > 1_000_000  # a megabyte of WAL with nothing for the publication

        async def advanced() -> bool:
            return await db.confirmed_flush("s1") >= written

        await wait_for(advanced, timeout=15)
    assert not (tmp_path / "out.jsonl").exists() or (tmp_path / "out.jsonl").read_text() == ""


async def test_a_column_added_mid_stream(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, a text)")
    async with running(pipeline(db.dsn), tmp_path):
        await db.execute("INSERT INTO items VALUES (1, 'x')")
        await wait_lines(tmp_path / "out.jsonl", 1)
        await db.execute("ALTER TABLE items ADD COLUMN b int DEFAULT 5")
        await db.execute("INSERT INTO items VALUES (2, 'y', 7)")
        await db.execute("UPDATE items SET a = 'z' WHERE id = 1")
        await db.execute("ALTER TABLE items DROP COLUMN a")
        await db.execute("INSERT INTO items VALUES (3, 8)")
        lines = await wait_lines(tmp_path / "out.jsonl", 4)
    assert [line["payload"]["after"] for line in lines] == [
        {"id": 1, "a": "x"},
        {"id": 2, "a": "y", "b": 7},
        {"id": 1, "a": "z", "b": 5},
        {"id": 3, "b": 8},
    ]


async def test_reconnects_when_the_server_ends_the_connection(
    db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The walsender is terminated between and during transactions: the input reconnects from what is
    settled, and every change arrives once, in order."""
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    out = tmp_path / "out.jsonl"
    terminate = "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 's1'"
    async with running(pipeline(db.dsn, extra="    chunk_size: 100"), tmp_path):
        await db.execute("INSERT INTO items SELECT generate_series(1, 10)")
        await wait_lines(out, 10)
        await db.execute(terminate)
        await db.execute("INSERT INTO items SELECT generate_series(11, 20)")
        await wait_lines(out, 20, timeout=15)
        await db.execute("INSERT INTO items SELECT generate_series(21, 20000)")
        await db.execute(terminate)  # most likely mid-transaction
        lines = await wait_lines(out, 20000, timeout=30)
        await anyio.sleep(0.5)
    lines = await wait_lines(out, 20000)
    ids = [line["payload"]["after"]["id"] for line in lines]
    assert len(ids) - len(set(ids)) == len(lines) - 20000  # any repeat is a change delivered again...
    assert sorted(set(ids)) == list(range(1, 20001))  # ...and none is missing
    assert len({line["id"] for line in lines}) == 20000  # a change delivered again has the same id
    assert caplog.text.count("replication connection lost") >= 2
    print(f"delivered={len(lines)} repeated={len(lines) - 20000}")


async def test_writes_in_another_database_move_the_slot_too(db: Database, tmp_path: Path) -> None:
    """WAL is shared by the cluster: a database that only the others write to still confirms past it."""
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    other = Database(db.cluster, "postgres")
    await other.execute("CREATE TABLE IF NOT EXISTS elsewhere (id int, t text)")
    async with running(pipeline(db.dsn), tmp_path):

        async def slot_ready() -> bool:
            return await db.confirmed_flush("s1") > 0

        await wait_for(slot_ready)
        for _ in range(10):
            await other.execute("INSERT INTO elsewhere SELECT g, repeat('z', 500) FROM generate_series(1, 100) g")
        written = parse_lsn(str(await other.value("SELECT pg_current_wal_lsn()")))

        async def advanced() -> bool:
            return await db.confirmed_flush("s1") >= written

        await wait_for(advanced, timeout=15)


async def test_a_failed_unit_holds_the_slot_and_stops_the_input(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    text = pipeline(db.dsn, sink_yaml="{type: flaky, route: all, delivery: {retries: 0}}")
    with pytest.raises(BaseException) as caught:  # an exception group holding the sink's error
        async with running(text, tmp_path) as pipe:
            flaky = sink(pipe, "out")
            await db.execute("INSERT INTO items VALUES (1)")
            with anyio.fail_after(10):
                while not flaky.written:  # noqa: ASYNC110 - polls the sink's record
                    await anyio.sleep(0.05)
            settled = await db.confirmed_flush("s1")
            flaky.fatal = True
            await db.execute("INSERT INTO items VALUES (2)")
            await db.execute("INSERT INTO items VALUES (3)")
            await anyio.sleep(10)  # the input's error ends the pipeline, and this wait with it
    assert "failed to write" in " ".join(str(error) for error in leaves(caught.value))
    assert await db.confirmed_flush("s1") == settled  # the failed transaction is not confirmed


async def test_large_transactions_streamed_before_commit(db: Database, tmp_path: Path) -> None:
    """logical_decoding_work_mem at its 64 kB minimum: big transactions reach the input while they run
    (protocol 2). Only committed work becomes events, after its commit, in commit order."""
    cluster = db.cluster
    cluster.psql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    cluster.psql("SELECT pg_reload_conf()")
    try:
        await db.execute("CREATE TABLE items (id int PRIMARY KEY, t text)")
        out = tmp_path / "out.jsonl"
        async with running(pipeline(db.dsn, extra="    chunk_size: 333"), tmp_path):
            writer = await PgConnection.connect(db.dsn)
            try:
                await writer.execute("BEGIN")
                await writer.execute("INSERT INTO items SELECT g, repeat('a', 50) FROM generate_series(1, 5000) g")
                await writer.execute("SAVEPOINT half")
                await writer.execute("INSERT INTO items SELECT g, 'b' FROM generate_series(5001, 6000) g")
                await writer.execute("ROLLBACK TO SAVEPOINT half")
                await writer.execute("INSERT INTO items SELECT g, 'c' FROM generate_series(6001, 7000) g")
                await db.execute("INSERT INTO items VALUES (30000, 'committed first')")  # while it runs
                await writer.execute("COMMIT")
                await writer.execute("BEGIN")
                await writer.execute("INSERT INTO items SELECT g, 'd' FROM generate_series(10001, 15000) g")
                await writer.execute("ROLLBACK")
            finally:
                await writer.aclose()
            await db.execute("INSERT INTO items VALUES (40000, 'last')")
            lines = await wait_lines(out, 6002)
            await anyio.sleep(0.5)
        lines = await wait_lines(out, 6002)
        ids = [line["payload"]["after"]["id"] for line in lines]
        assert ids == [30000, *range(1, 5001), *range(6001, 7001), 40000]
        assert all(line["valid"] for line in lines), lines[1]["errors"]
        streamed_xids = {line["payload"]["xid"] for line in lines[1:-1]}
        assert len(streamed_xids) == 1 and streamed_xids != {lines[0]["payload"]["xid"]}
        commits = {line["payload"]["commit_lsn"] for line in lines[1:-1]}
        assert len(commits) == 1 and commits != {lines[0]["payload"]["commit_lsn"]}
        assert len({line["id"] for line in lines}) == len(lines)
        streamed = await db.value("SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = 's1'")
        assert int(streamed or 0) >= 2  # the server did stream them
    finally:
        cluster.psql("ALTER SYSTEM RESET logical_decoding_work_mem")
        cluster.psql("SELECT pg_reload_conf()")
