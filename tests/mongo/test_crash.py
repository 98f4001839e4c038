"""``streamer run`` on a change stream, killed and restarted: nothing lost, redeliveries keep their ids.

Subprocesses against nx-27017 on a file database: SIGKILL of streamer mid-stream (into a file sink, and
into the postgres sink with ``on_conflict: ignore``), SIGKILL of the server mid-stream, and a corrupt
token file (a clear error naming the file and the choices, exit 1).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.mongo.conftest import NxServer
from tests.support import read_jsonl

pytestmark = pytest.mark.services

TOTAL = 3000


def write_pipeline(tmp_path: Path, nx: NxServer, sink: str) -> Path:
    spec = tmp_path / "mongo.yml"
    spec.write_text(
        f"""
name: crash
inputs:
  orders:
    type: mongo_change_stream
    uri: "{nx.uri}"
    database: app
    collection: orders
    checkpoint_interval: 0.1
    max_await: 0.1
    batch_size: 50
    retry_backoff: 0.1
    retry_max_backoff: 0.5
    server_selection_timeout: 1
    token_store: {{type: file, path: state/token.json}}
processors:
  - type: validate
sinks:
{sink}
  invalid: {{type: file, path: out/invalid.jsonl, route: invalid}}
"""
    )
    return spec


FILE_SINK = "  valid: {type: file, path: out/valid.jsonl, fsync: batch}"


_STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_process_left() -> Iterator[None]:
    """Kill any `streamer run` a failed test left running (and reap it)."""
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
        process.wait(10)


def start(tmp_path: Path, spec: Path, run: int) -> subprocess.Popen[bytes]:
    with (tmp_path / f"streamer-{run}.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(spec)], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log
        )
    _STARTED.append(process)
    return process


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {what}")
        time.sleep(0.05)


@contextmanager
def writer(nx: NxServer, total: int = TOTAL, pause: float = 0.01) -> Iterator[list[int]]:
    """Insert ``{"n": 0..total-1}`` in small batches from a thread, retrying what a server restart failed."""
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    done: list[int] = []
    stop = threading.Event()

    def insert() -> None:
        client: Any = MongoClient(nx.uri, serverSelectionTimeoutMS=20000)
        try:
            n = 0
            while n < total and not stop.is_set():
                batch = [{"_id": i, "n": i} for i in range(n, min(n + 20, total))]
                for _attempt in range(100):
                    try:
                        # After a failure (the server restarted mid-write) write what it does not hold.
                        have = (
                            {d["_id"] for d in client.app.orders.find({"_id": {"$gte": n}}, {"_id": 1})}
                            if _attempt
                            else set()
                        )
                        missing = [d for d in batch if d["_id"] not in have]
                        if missing:
                            client.app.orders.insert_many(missing, ordered=True)
                        break
                    except PyMongoError:
                        time.sleep(0.2)
                else:
                    raise AssertionError("the writer could not write for 20 s")
                n += 20
                done.append(n)
                time.sleep(pause)
        finally:
            client.close()

    thread = threading.Thread(target=insert, daemon=True)
    thread.start()
    try:
        yield done
        thread.join(120)
        assert not thread.is_alive(), "the writer did not finish"
    finally:
        stop.set()


def inserted_numbers(path: Path) -> list[int]:
    # The inserted document's `n` (nx-27017 reports an integer `_id` in `documentKey` as a string).
    return [e["payload"]["full_document"]["n"] for e in read_jsonl(path) if e["payload"]["operation"] == "insert"]


def stop(process: subprocess.Popen[bytes], tmp_path: Path, run: int) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, (tmp_path / f"streamer-{run}.log").read_text()


def test_sigkill_and_restart_lose_nothing(nx: NxServer, tmp_path: Path) -> None:
    spec = write_pipeline(tmp_path, nx, FILE_SINK)
    valid = tmp_path / "out" / "valid.jsonl"
    first = start(tmp_path, spec, 1)
    time.sleep(1.5)  # the stream is open before the first insert
    with writer(nx):
        wait_for(lambda: len(inserted_numbers(valid)) >= 600, 60, "600 changes written before the kill")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        written_before = len(inserted_numbers(valid))
        token_file = tmp_path / "state" / "token.json"
        assert token_file.exists()
        second = start(tmp_path, spec, 2)
    wait_for(lambda: set(inserted_numbers(valid)) >= set(range(TOTAL)), 60, "every change written after the restart")
    time.sleep(0.5)
    stop(second, tmp_path, 2)

    events = [e for e in read_jsonl(valid) if e["payload"]["operation"] == "insert"]
    numbers = [e["payload"]["full_document"]["n"] for e in events]
    assert set(numbers) == set(range(TOTAL)), "lost changes"
    # A change read twice (after the saved token, before the kill) has the same id both times.
    ids = {e["id"]: e["payload"]["full_document"]["n"] for e in events}
    assert len(ids) == TOTAL
    redelivered = len(events) - TOTAL
    assert 0 <= redelivered <= written_before
    print(f"written before the kill: {written_before}, redelivered after it: {redelivered}")
    assert read_jsonl(tmp_path / "out" / "invalid.jsonl") == []


def test_sigkill_into_postgres_stores_each_change_once(nx: NxServer, tmp_path: Path, postgres_dsn: str) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    table = f"mongo_cdc_{uuid.uuid4().hex[:8]}"
    sink = f"""  valid:
    type: postgres
    dsn: "{postgres_dsn}"
    table: {table}
    create_table: true
    on_conflict: ignore"""
    spec = write_pipeline(tmp_path, nx, sink)

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            exists = await conn.fetchval("SELECT to_regclass($1)", table)
            if exists is None:
                return 0, 0
            row = await conn.fetchrow(
                f"SELECT count(*) AS n, count(DISTINCT (payload->'document_key'->>'_id')) AS docs FROM \"{table}\" "
                "WHERE payload->>'operation' = 'insert'"
            )
            return int(row["n"]), int(row["docs"])
        finally:
            await conn.close()

    def rows() -> tuple[int, int]:
        import asyncio

        return asyncio.run(count())

    try:
        first = start(tmp_path, spec, 1)
        time.sleep(1.5)
        with writer(nx):
            wait_for(lambda: rows()[0] >= 600, 60, "600 rows before the kill")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            second = start(tmp_path, spec, 2)
        wait_for(lambda: rows()[1] >= TOTAL, 60, "every change stored after the restart")
        time.sleep(0.5)
        stop(second, tmp_path, 2)
        stored, documents = rows()
        assert (stored, documents) == (TOTAL, TOTAL)  # each change once: the redelivered ones were ignored
    finally:
        import asyncio

        async def drop() -> None:
            conn = await asyncpg.connect(postgres_dsn)
            try:
                await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            finally:
                await conn.close()

        asyncio.run(drop())


def test_server_killed_mid_stream_is_reconnected_without_loss(nx: NxServer, tmp_path: Path) -> None:
    spec = write_pipeline(tmp_path, nx, FILE_SINK)
    valid = tmp_path / "out" / "valid.jsonl"
    process = start(tmp_path, spec, 1)
    time.sleep(1.5)
    with writer(nx, pause=0.02):
        wait_for(lambda: len(inserted_numbers(valid)) >= 400, 60, "400 changes before the server's kill")
        # SIGKILL, then the same file and port after longer than pymongo's own resume attempt waits for a
        # server (`server_selection_timeout: 1`): the input's reconnect loop takes over.
        nx.kill()
        time.sleep(3)
        nx.start()
    wait_for(lambda: set(inserted_numbers(valid)) >= set(range(TOTAL)), 60, "every change after the reconnect")
    stop(process, tmp_path, 1)
    log = (tmp_path / "streamer-1.log").read_text()
    assert "change stream interrupted" in log and "reconnecting" in log
    events = [e for e in read_jsonl(valid) if e["payload"]["operation"] == "insert"]
    assert len({e["id"] for e in events}) == TOTAL == len(events)  # resumed from the last change read


def test_corrupt_token_file_is_a_clear_error(nx: NxServer, tmp_path: Path) -> None:
    spec = write_pipeline(tmp_path, nx, FILE_SINK)
    token_file = tmp_path / "state" / "token.json"
    token_file.parent.mkdir()
    token_file.write_text('{"format": 1, "key": "crash/orders", "tok')
    result = subprocess.run(
        [sys.executable, "-m", "streamer", "run", str(spec)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert result.returncode == 1
    message = result.stderr
    assert f"the saved resume token in the file {token_file} is corrupt" in message
    assert "restore it from a backup" in message and "delete it to start from" in message
    assert "snapshot: initial" in message
    assert not (tmp_path / "out" / "valid.jsonl").exists() or read_jsonl(tmp_path / "out" / "valid.jsonl") == []


def test_shipped_pipeline_mongo_cdc(nx: NxServer, tmp_path: Path, postgres_dsn: str) -> None:
    """pipelines/mongo-cdc.yml as shipped, with its variables pointed at nx-27017 and the test database."""
    import asyncio

    asyncpg = pytest.importorskip("asyncpg")
    from pymongo import MongoClient

    from tests.support import ROOT

    table = f"mongo_cdc_{uuid.uuid4().hex[:8]}"
    environ = {
        **os.environ,
        "MONGO_URI": nx.uri,
        "MONGO_DB": "shop",
        "MONGO_COLLECTION": "carts",
        "POSTGRES_DSN": postgres_dsn,
        "POSTGRES_TABLE": table,
    }
    mongo: Any = MongoClient(nx.uri)
    carts = mongo.shop.carts
    carts.insert_many([{"_id": n, "n": n} for n in range(100)])  # before: read by the snapshot

    async def query(sql: str, *args: Any) -> Any:
        conn = await asyncpg.connect(postgres_dsn)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    def rows() -> list[Any]:
        if not asyncio.run(query("SELECT to_regclass($1) AS t", table))[0]["t"]:
            return []
        return list(asyncio.run(query(f"SELECT payload->>'operation' AS op, payload FROM \"{table}\"")))

    log = (tmp_path / "streamer.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", str(ROOT / "pipelines" / "mongo-cdc.yml")],
        cwd=tmp_path, env=environ, stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    _STARTED.append(process)
    try:
        wait_for(lambda: len(rows()) >= 100, 60, "the snapshot stored")
        carts.insert_many([{"_id": n, "n": n} for n in range(100, 110)])
        carts.update_one({"_id": 5}, {"$set": {"n": -5}})
        carts.delete_one({"_id": 6})
        wait_for(lambda: len(rows()) >= 112, 60, "the changes stored")
        time.sleep(1.5)  # one checkpoint_interval: the token row is written
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, (tmp_path / "streamer.log").read_text()
        stored = rows()
        ops = sorted(r["op"] for r in stored)
        assert ops == sorted(["read"] * 100 + ["insert"] * 10 + ["update", "delete"])
        token = asyncio.run(
            query("SELECT token, snapshot FROM streamer_resume_tokens WHERE stream = $1", "mongo-cdc/mongo")
        )
        assert token[0]["snapshot"] == "done" and '"nx:12"' in token[0]["token"]
    finally:
        log.close()
        mongo.close()
        asyncio.run(query(f'DROP TABLE IF EXISTS "{table}"'))
        if asyncio.run(query("SELECT to_regclass('streamer_resume_tokens') AS t"))[0]["t"]:
            asyncio.run(query("DELETE FROM streamer_resume_tokens WHERE stream = $1", "mongo-cdc/mongo"))
