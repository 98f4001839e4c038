"""The mongo_change_stream input against a real wire-protocol server (nx-27017 on a file database).

In process: changes arrive with their fields and deterministic ids and validate against the built-in
schema; the snapshot comes first and the stream follows without a gap; a stop and a restart resume after
the last saved token; the token can live in PostgreSQL; the spec's cross-field checks.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamer.core.config import ConfigError
from streamer.core.graph import check_backend
from streamer.mongo.change_stream import MongoChangeStreamInput
from streamer.mongo.events import change_event_id
from streamer.mongo.schema import MONGO_CHANGE_SCHEMA
from streamer.mongo.tokens import FileTokenStore, decode_state
from tests.mongo.conftest import NxServer
from tests.support import compile_text, read_jsonl, running, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def pipeline(nx: NxServer, *, store: str = "{type: file, path: state/token.json}", **options: Any) -> str:
    extra = "".join(f"    {key}: {json.dumps(value)}\n" for key, value in options.items())
    return f"""
name: mongo
inputs:
  orders:
    type: mongo_change_stream
    uri: "{nx.uri}"
    database: app
    collection: orders
    checkpoint_interval: 0.05
    max_await: 0.1
    token_store: {store}
{extra}processors:
  - type: validate
sinks:
  valid: {{type: file, path: out/valid.jsonl}}
  invalid: {{type: file, path: out/invalid.jsonl, route: invalid}}
"""


def the_input(pipeline_: Any) -> MongoChangeStreamInput:
    found = pipeline_.inputs[0]
    assert isinstance(found, MongoChangeStreamInput)
    return found


async def opened(pipeline_: Any) -> None:
    """Wait until the input's stream is open (changes made before that are not part of it)."""
    stream = the_input(pipeline_)
    await wait_until(lambda: stream.checkpoint is not None, what="the input started")
    await anyio.sleep(0.3)  # the watch command is sent right after


def client(nx: NxServer) -> Any:
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(nx.uri)


async def test_changes_arrive_with_their_fields(nx: NxServer, tmp_path: Path) -> None:
    mongo = client(nx)
    orders = mongo.app.orders
    try:
        async with running(pipeline(nx, full_document="updateLookup"), tmp_path) as p:
            await opened(p)
            inserted = (await orders.insert_one({"sku": "a-1", "qty": 2})).inserted_id
            await orders.update_one({"_id": inserted}, {"$set": {"qty": 3}})
            await orders.replace_one({"_id": inserted}, {"sku": "a-1", "qty": 5, "note": "replaced"})
            await orders.delete_one({"_id": inserted})
            valid = tmp_path / "out" / "valid.jsonl"
            await wait_until(lambda: len(read_jsonl(valid)) >= 4, what="four changes written")
            state_file = tmp_path / "state" / "token.json"
            await wait_until(
                lambda: state_file.exists() and '"nx:4"' in state_file.read_text(), what="the last token saved"
            )
    finally:
        await mongo.close()

    events = read_jsonl(tmp_path / "out" / "valid.jsonl")
    assert read_jsonl(tmp_path / "out" / "invalid.jsonl") == []
    # nx-27017 reports a replace as an update (MongoDB says `replace`).
    assert [e["payload"]["operation"] for e in events] == ["insert", "update", "update", "delete"]
    oid = {"$oid": str(inserted)}
    for event in events:
        payload = event["payload"]
        assert event["schema"] == MONGO_CHANGE_SCHEMA and event["valid"] is True
        assert event["protocol"] == "mongo_change_stream"
        assert payload["namespace"] == {"db": "app", "coll": "orders"}
        assert payload["document_key"] == {"_id": oid}
        assert set(payload["cluster_time"]) == {"t", "i"}
        assert event["event_tstamp"] is not None
        # The id is a function of the change's resume token: the same on every read of the change.
        assert event["id"] == change_event_id(payload["resume_token"])
        uuid.UUID(event["id"])
    assert events[0]["payload"]["full_document"]["qty"] == 2
    assert events[1]["payload"]["full_document"]["qty"] == 3  # updateLookup
    assert events[2]["payload"]["full_document"]["note"] == "replaced"
    assert len({e["id"] for e in events}) == 4
    saved = decode_state((tmp_path / "state" / "token.json").read_bytes(), "test")
    assert saved.token == {"_data": "nx:4"} and saved.snapshot is None


async def test_pipeline_filters_operation_types_on_the_server(nx: NxServer, tmp_path: Path) -> None:
    mongo = client(nx)
    orders = mongo.app.orders
    try:
        text = pipeline(nx, pipeline=[{"$match": {"operationType": {"$in": ["insert"]}}}])
        async with running(text, tmp_path) as p:
            await opened(p)
            for n in range(3):
                inserted = (await orders.insert_one({"n": n})).inserted_id
                await orders.delete_one({"_id": inserted})
            await wait_until(lambda: the_input(p).changes >= 3, what="three inserts read")
            await anyio.sleep(0.3)
    finally:
        await mongo.close()
    events = read_jsonl(tmp_path / "out" / "valid.jsonl")
    assert [e["payload"]["operation"] for e in events] == ["insert"] * 3
    assert [e["payload"]["full_document"]["n"] for e in events] == [0, 1, 2]


async def test_stop_and_restart_resumes_after_the_saved_token(nx: NxServer, tmp_path: Path) -> None:
    mongo = client(nx)
    orders = mongo.app.orders
    try:
        async with running(pipeline(nx), tmp_path) as p:
            await opened(p)
            await orders.insert_many([{"n": n} for n in range(50)])
            await wait_until(lambda: the_input(p).changes >= 50, what="the first 50 read")
        # While nothing runs: these are read after the restart, from the saved token.
        await orders.insert_many([{"n": n} for n in range(50, 80)])
        async with running(pipeline(nx), tmp_path) as p:
            await opened(p)
            await orders.insert_many([{"n": n} for n in range(80, 100)])
            await wait_until(lambda: the_input(p).changes >= 50, what="the other 50 read")
            await anyio.sleep(0.2)
            assert the_input(p).changes == 50
    finally:
        await mongo.close()
    events = read_jsonl(tmp_path / "out" / "valid.jsonl")
    assert sorted(e["payload"]["full_document"]["n"] for e in events) == list(range(100))
    assert len({e["id"] for e in events}) == 100


async def test_snapshot_then_the_stream_without_a_gap(nx: NxServer, tmp_path: Path) -> None:
    mongo = client(nx)
    orders = mongo.app.orders
    try:
        await orders.insert_many([{"n": n} for n in range(2500)])
        text = pipeline(nx, snapshot="initial", snapshot_batch_size=500)
        async with running(text, tmp_path) as p:
            await wait_until(lambda: the_input(p).snapshot_documents >= 2500, what="the snapshot read")
            await orders.insert_many([{"n": n} for n in range(2500, 2510)])
            await wait_until(lambda: the_input(p).changes >= 10, what="the changes after it")
            state_file = tmp_path / "state" / "token.json"
            await wait_until(lambda: '"done"' in state_file.read_text(), what="the snapshot marked done")
        # A restart does not read the snapshot again: the token says it is done.
        async with running(text, tmp_path) as p:
            await opened(p)
            assert the_input(p).snapshot_documents == 0
    finally:
        await mongo.close()
    events = read_jsonl(tmp_path / "out" / "valid.jsonl")
    reads = [e for e in events if e["payload"]["operation"] == "read"]
    inserts = [e for e in events if e["payload"]["operation"] == "insert"]
    assert sorted(e["payload"]["full_document"]["n"] for e in reads) == list(range(2500))
    assert sorted(e["payload"]["full_document"]["n"] for e in inserts) == list(range(2500, 2510))
    assert all(e["valid"] for e in events) and len({e["id"] for e in events}) == 2510
    assert reads[0]["payload"]["document_key"]["_id"] == reads[0]["payload"]["full_document"]["_id"]
    assert decode_state((tmp_path / "state" / "token.json").read_bytes(), "t").snapshot == "done"


async def test_a_snapshot_interrupted_is_read_again_with_the_same_ids(nx: NxServer, tmp_path: Path) -> None:
    mongo = client(nx)
    orders = mongo.app.orders
    try:
        await orders.insert_many([{"n": n} for n in range(3000)])
        text = pipeline(nx, snapshot="initial", snapshot_batch_size=100)
        async with running(text, tmp_path) as p:
            await wait_until(lambda: the_input(p).snapshot_documents >= 300, what="part of the snapshot read")
        first = read_jsonl(tmp_path / "out" / "valid.jsonl")
        assert 300 <= len(first) < 3000
        assert decode_state((tmp_path / "state" / "token.json").read_bytes(), "t").snapshot == "in_progress"
        async with running(text, tmp_path) as p:
            await wait_until(lambda: the_input(p).snapshot_documents >= 3000, what="the whole snapshot read")
    finally:
        await mongo.close()
    events = read_jsonl(tmp_path / "out" / "valid.jsonl")
    # Every document twice at most, and the re-read ones with the ids of the first read: an idempotent
    # sink (postgres, on_conflict: ignore) stores each once.
    ids = {e["id"] for e in events}
    assert len(ids) == 3000
    assert {e["id"] for e in first} <= ids


async def test_token_store_in_postgres(nx: NxServer, tmp_path: Path, postgres_dsn: str) -> None:
    import asyncpg

    table = f"mongo_tokens_{uuid.uuid4().hex[:8]}"
    store = f"{{type: postgres, dsn: '{postgres_dsn}', table: {table}}}"
    mongo = client(nx)
    orders = mongo.app.orders
    conn = await asyncpg.connect(postgres_dsn)
    try:
        async with running(pipeline(nx, store=store), tmp_path) as p:
            await opened(p)
            await orders.insert_many([{"n": n} for n in range(10)])
            await wait_until(lambda: the_input(p).changes >= 10, what="ten changes read")
        rows = await conn.fetch(f'SELECT stream, token, snapshot FROM "{table}"')
        assert [r["stream"] for r in rows] == ["mongo/orders"]
        assert decode_state(rows[0]["token"], table).token == {"_data": "nx:10"}
        await orders.insert_many([{"n": n} for n in range(10, 15)])
        async with running(pipeline(nx, store=store), tmp_path) as p:
            await wait_until(lambda: the_input(p).changes >= 5, what="the five made while stopped")
    finally:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')
        await conn.close()
        await mongo.close()
    events = read_jsonl(tmp_path / "out" / "valid.jsonl")
    assert sorted(e["payload"]["full_document"]["n"] for e in events) == list(range(15))


async def test_file_store_replaces_the_file_atomically(tmp_path: Path) -> None:
    from streamer.mongo.tokens import ResumeState

    store = FileTokenStore(tmp_path / "state" / "t.json", "p/i")
    assert await store.load() is None
    for n in range(3):
        await store.save(ResumeState(token={"_data": f"8263{n:04d}"}, snapshot=None))
    assert await store.load() == ResumeState(token={"_data": "82630002"})
    assert [f.name for f in (tmp_path / "state").iterdir()] == ["t.json"]  # no temporary file left


def test_spec_checks() -> None:
    base = """
name: m
inputs:
  c:
    type: mongo_change_stream
    uri: {uri}
    token_store: {{type: file, path: t.json}}
{extra}
sinks:
  out: {{type: stdout}}
"""
    with pytest.raises(ConfigError) as caught:
        compile_text(base.format(uri="mongodb://h", extra="    collection: orders"))
    assert "`collection` needs `database`" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        compile_text(base.format(uri="mongodb://h", extra="    database: app\n    snapshot: initial"))
    assert "`snapshot: initial` needs `database` and `collection`" in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        compile_text(base.format(uri="http://h", extra=""))
    assert "mongodb://" in str(caught.value)
    compiled = compile_text(base.format(uri="mongodb://h", extra="    database: app"))
    with pytest.raises(ConfigError) as caught:
        check_backend(compiled, "trio")
    assert "pymongo's asyncio client" in str(caught.value)


def test_token_store_checks() -> None:
    base = """
name: m
inputs:
  c:
    type: mongo_change_stream
    uri: mongodb://h
    database: app
    token_store: {store}
sinks:
  out: {{type: stdout}}
"""
    cases = {
        "{type: file}": "a `file` token store needs `path`",
        "{type: file, path: t.json, dsn: 'postgresql://h/db'}": "`dsn` is for a `postgres` token store",
        "{type: postgres}": "a `postgres` token store needs `dsn`",
        "{type: postgres, dsn: 'postgresql://h/db', table: 'a;b'}": "is not a table name",
        "{type: s3, path: x}": "token_store.type: Invalid enum value 's3'",
    }
    for store, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            compile_text(base.format(store=store))
        assert message in str(caught.value), (store, str(caught.value))
        assert "test.yml:" in str(caught.value)


def flatten(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in flatten(inner)]
    return [error]


async def test_the_token_is_saved_only_once_the_sink_holds_the_changes(nx: NxServer, tmp_path: Path) -> None:
    from streamer.core.errors import FatalError
    from tests.support import sink

    text = pipeline(nx).replace(
        "  valid: {type: file, path: out/valid.jsonl}", "  valid: {type: controlled, delivery: {retries: 0}}"
    )
    state_file = tmp_path / "state" / "token.json"

    def saved() -> str:
        return str(decode_state(state_file.read_bytes(), "t").token["_data"]) if state_file.exists() else ""

    mongo = client(nx)
    orders = mongo.app.orders
    try:
        with pytest.raises(BaseExceptionGroup) as caught:
            async with running(text, tmp_path) as p:
                await opened(p)
                held = sink(p, "valid")
                await orders.insert_many([{"n": n} for n in range(5)])
                await wait_until(lambda: saved() == "nx:5", what="the token of the five written")
                held.block()
                await orders.insert_many([{"n": n} for n in range(5, 10)])
                await wait_until(lambda: the_input(p).changes == 10, what="five more read")
                await held.waiting.wait()
                await anyio.sleep(0.5)  # ten checkpoint intervals
                assert saved() == "nx:5", "a token saved before the sink wrote its changes"
                held.release()
                await wait_until(lambda: saved() == "nx:10", what="the token once they are written")
                held.fail_with = FatalError("the disk is on fire")
                await orders.insert_one({"n": 10})
                with anyio.fail_after(10):
                    await anyio.sleep_forever()  # the input stops the run with the sink's error
    finally:
        await mongo.close()
    assert any("the disk is on fire" in str(e) for e in flatten(caught.value))
    assert saved() == "nx:10"  # not past the failed change
