"""SIGKILL during a stream, restart: every change present once in the postgres sink (on_conflict: ignore).

Runs ``streamer run`` as a subprocess on a postgres_cdc -> postgres pipeline (with a second required sink,
a file, that counts what was delivered, duplicates included), while a writer commits transactions.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.cdc.conftest import Database
from tests.support import ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.services]

TRANSACTIONS = 60
ROWS = 100  # per transaction: 100 inserts, then 20 updates and 10 deletes in the same transaction


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as output:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(config)],
            cwd=config.parent,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )


async def sink_count(db: Database) -> int:
    try:
        return int(await db.value("SELECT count(*) FROM events") or 0)
    except Exception:
        return 0


async def test_sigkill_mid_stream_loses_nothing_and_stores_each_change_once(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
    config = tmp_path / "pipeline.yml"
    config.write_text(f"""
name: cdc-crash
inputs:
  db:
    type: postgres_cdc
    dsn: {db.dsn}
    tables: [public.items]
    slot: crash
    publication: crash
    create: true
    chunk_size: 50
    status_interval: 0.2
processors: []
sinks:
  pg:
    type: postgres
    dsn: {db.dsn}
    table: events
    create_table: true
    on_conflict: ignore
    route: all
  copy: {{type: file, path: delivered.jsonl, route: all}}
""")
    log = tmp_path / "streamer.log"
    process = start(config, log)
    killed = False
    try:
        with anyio.fail_after(60):
            while await db.value("SELECT count(*) FROM pg_replication_slots WHERE active") != "1":
                assert process.poll() is None, log.read_text()
                await anyio.sleep(0.1)
            await db.execute("INSERT INTO items VALUES (-1, 'warm-up')")
            while await sink_count(db) == 0 and process.poll() is None:  # noqa: ASYNC110 - polls the database
                await anyio.sleep(0.1)
            assert process.poll() is None, log.read_text()
            for t in range(TRANSACTIONS):
                base = t * ROWS
                await db.execute(
                    f"BEGIN; INSERT INTO items SELECT g, 'v' || g FROM generate_series({base}, {base + ROWS - 1}) g;"
                    f"UPDATE items SET v = 'u' WHERE id BETWEEN {base} AND {base + 19};"
                    f"DELETE FROM items WHERE id BETWEEN {base + 20} AND {base + 29}; COMMIT"
                )
                if t == TRANSACTIONS // 3:
                    process.send_signal(signal.SIGKILL)  # mid-stream: units in flight, the slot behind
                    process.wait()
                    killed = True
                    process = start(config, log)
                await anyio.sleep(0.01)
            expected = 1 + TRANSACTIONS * (ROWS + 20 + 10)
            while await sink_count(db) < expected:
                assert process.poll() is None, log.read_text()[-3000:]
                await anyio.sleep(0.2)
            await anyio.sleep(1)  # anything more would be a duplicate row: there must be none
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    assert killed
    rows = await db.execute("SELECT payload->>'op', count(*), count(DISTINCT id) FROM events GROUP BY 1 ORDER BY 1")
    assert rows == [
        ["delete", str(TRANSACTIONS * 10), str(TRANSACTIONS * 10)],
        ["insert", str(1 + TRANSACTIONS * ROWS), str(1 + TRANSACTIONS * ROWS)],
        ["update", str(TRANSACTIONS * 20), str(TRANSACTIONS * 20)],
    ]
    # Every change present: each insert's row id, each update and delete, by (op, row id).
    changes = await db.execute(
        "SELECT count(DISTINCT (payload->>'op') || coalesce(payload->'after'->>'id', payload->'before'->>'id')) "
        "FROM events"
    )
    assert changes == [[str(expected)]]
    # Duplicates delivered (redelivered after the kill): counted from the file sink, same ids.
    delivered = [json.loads(line) for line in (tmp_path / "delivered.jsonl").read_bytes().split(b"\n")
                 if line.strip().endswith(b"}")]  # fmt: skip
    ids = [line["id"] for line in delivered]
    duplicates = len(ids) - len(set(ids))
    print(f"delivered={len(ids)} unique={len(set(ids))} duplicates={duplicates} stored={expected}")
    assert set(ids) >= {row[0] for row in await db.execute("SELECT id::text FROM events")}
