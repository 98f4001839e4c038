"""The postgres sink against the local PostgreSQL: what lands, typed; mapping; keys; errors at start."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from streamer.core.config import ConfigError
from streamer.core.envelope import Envelope, ErrorDetail, SelfDescribing, Source
from streamer.core.errors import FatalError
from streamer.postgres.sink import PostgresSinkError
from streamer.testing import sample_envelopes
from tests.postgres.helpers import make_sink, write
from tests.registry.conftest import free_port
from tests.support import ROOT, compile_text

pytestmark = [pytest.mark.anyio, pytest.mark.services]


def envelope(**fields: Any) -> Envelope:
    """One envelope with every field set to a known literal."""
    values: dict[str, Any] = {
        "id": "5f0c8d3e-8a4b-4c1e-9d2f-0a1b2c3d4e5f",
        "collector_tstamp": datetime(2026, 12, 4, 10, 11, 12, 345678, tzinfo=UTC),
        "event_tstamp": datetime(2026, 12, 4, 10, 11, 10, tzinfo=UTC),
        "source": Source(
            input="web", client_ip="198.51.100.4", user_agent="curl/8", headers={"x-team": "growth"},
            metadata={"offset": 7},
        ),
        "protocol": "snowplow",
        "payload": {"order": {"total": 12.5, "currency": "EUR"}, "items": [1, 2]},
        "schema": "iglu:com.acme/checkout/jsonschema/1-0-0",
        "schema_vendor": "com.acme",
        "schema_name": "checkout",
        "schema_format": "jsonschema",
        "schema_version": "1-0-0",
        "contexts": [SelfDescribing(schema="iglu:com.acme/user/jsonschema/1-0-0", data={"id": "u1"})],
        "atomic": {"aid": "shop", "e": "ue"},
        "valid": False,
        "errors": [ErrorDetail(path="$.total", keyword="minimum", message="too small")],
        "tags": {"team": "growth"},
    }  # fmt: skip
    values.update(fields)
    return Envelope(**values)


async def test_default_columns_are_typed_and_hold_each_field(postgres_dsn: str, db: Any, table: str) -> None:
    sink = make_sink(postgres_dsn, table, create_table=True)
    await sink.open()
    try:
        await write(sink, [envelope()])
    finally:
        await sink.aclose()
    columns = await db.fetch(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns WHERE table_name = $1 "
        "ORDER BY ordinal_position",
        table,
    )
    assert [(c["column_name"], c["data_type"], c["is_nullable"]) for c in columns] == [
        ("id", "uuid", "NO"),
        ("collector_tstamp", "timestamp with time zone", "NO"),
        ("event_tstamp", "timestamp with time zone", "YES"),
        ("valid", "boolean", "NO"),
        ("protocol", "text", "NO"),
        ("schema", "text", "YES"),
        ("schema_vendor", "text", "YES"),
        ("schema_name", "text", "YES"),
        ("schema_format", "text", "YES"),
        ("schema_version", "text", "YES"),
        ("source", "jsonb", "YES"),
        ("payload", "jsonb", "YES"),
        ("contexts", "jsonb", "YES"),
        ("atomic", "jsonb", "YES"),
        ("errors", "jsonb", "YES"),
        ("tags", "jsonb", "YES"),
    ]
    key = await db.fetchval(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
        "WHERE i.indrelid = $1::regclass AND i.indisprimary",
        f'"{table}"',
    )
    assert key == "id"
    # Values read with SQL text casts, so the check does not go through any codec the sink uses.
    row = await db.fetchrow(
        f"SELECT id::text, collector_tstamp AT TIME ZONE 'UTC' AS collected, event_tstamp AT TIME ZONE 'UTC' AS at, "
        f"valid, protocol, schema, schema_vendor, schema_name, schema_format, schema_version, source::text, "
        f"payload->'order'->>'total' AS total, jsonb_typeof(payload->'order'->'total') AS total_type, "
        f'payload::text, contexts::text, atomic::text, errors::text, tags::text FROM "{table}"'
    )
    assert dict(row) == {
        "id": "5f0c8d3e-8a4b-4c1e-9d2f-0a1b2c3d4e5f",
        "collected": datetime(2026, 12, 4, 10, 11, 12, 345678),
        "at": datetime(2026, 12, 4, 10, 11, 10),
        "valid": False,
        "protocol": "snowplow",
        "schema": "iglu:com.acme/checkout/jsonschema/1-0-0",
        "schema_vendor": "com.acme",
        "schema_name": "checkout",
        "schema_format": "jsonschema",
        "schema_version": "1-0-0",
        "source": '{"input": "web", "headers": {"x-team": "growth"}, "metadata": {"offset": 7}, '
        '"client_ip": "198.51.100.4", "user_agent": "curl/8"}',
        "total": "12.5",
        "total_type": "number",
        "payload": '{"items": [1, 2], "order": {"total": 12.5, "currency": "EUR"}}',
        "contexts": '[{"data": {"id": "u1"}, "schema": "iglu:com.acme/user/jsonschema/1-0-0"}]',
        "atomic": '{"e": "ue", "aid": "shop"}',
        "errors": '[{"path": "$.total", "schema": null, "keyword": "minimum", "message": "too small"}]',
        "tags": '{"team": "growth"}',
    }


async def test_absent_values_are_sql_nulls(postgres_dsn: str, db: Any, table: str) -> None:
    sink = make_sink(postgres_dsn, table, create_table=True)
    await sink.open()
    try:
        bare = Envelope(
            id="00000000-0000-4000-8000-000000000001",
            collector_tstamp=datetime(2026, 1, 1, tzinfo=UTC),
            source=Source(input="file"),
            protocol="raw",
        )
        await write(sink, [bare])
    finally:
        await sink.aclose()
    row = await db.fetchrow(
        f"SELECT payload IS NULL AS p, contexts IS NULL AS c, errors IS NULL AS e, event_tstamp IS NULL AS t, "
        f'schema IS NULL AS s, valid, source::text FROM "{table}"'
    )
    assert dict(row) == {"p": True, "c": True, "e": True, "t": True, "s": True, "valid": True,
                         "source": '{"input": "file"}'}  # fmt: skip


async def test_columns_select_rename_and_follow_paths(postgres_dsn: str, db: Any, table: str) -> None:
    # An existing table with its own names and some types other than the defaults (text for a time,
    # text for a JSON value, a naive timestamp) and a column the sink does not write.
    await db.execute(
        f'CREATE TABLE "{table}" (event_id uuid PRIMARY KEY, collected_at timestamp NOT NULL, collected_text text, '
        "data jsonb, total jsonb, client_ip text, app text, team varchar(20), is_valid boolean, "
        "loaded_at timestamptz DEFAULT now())"
    )
    sink = make_sink(
        postgres_dsn,
        table,
        columns={
            "id": "event_id",
            "collector_tstamp": "collected_at",
            "event_tstamp": "collected_text",
            "payload": "data",
            "payload.order.total": "total",
            "source.client_ip": "client_ip",
            "atomic.aid": "app",
            "tags.team": "team",
            "valid": "is_valid",
        },
    )
    await sink.open()
    try:
        assert sink.ignore_conflicts  # event_id is the key: on_conflict auto -> ignore
        await write(sink, [envelope(), envelope(id="5f0c8d3e-8a4b-4c1e-9d2f-000000000002", payload=[1])])
    finally:
        await sink.aclose()
    rows = await db.fetch(
        f"SELECT event_id::text, collected_at, collected_text, data::text, total::text, client_ip, app, team, "
        f'is_valid, loaded_at IS NOT NULL AS defaulted FROM "{table}" ORDER BY event_id'
    )
    first = {
        "event_id": "5f0c8d3e-8a4b-4c1e-9d2f-000000000002",
        "collected_at": datetime(2026, 12, 4, 10, 11, 12, 345678),
        "collected_text": "2026-12-04T10:11:10+00:00",
        "data": "[1]",
        "total": None,  # a path into a payload that is not an object: NULL
        "client_ip": "198.51.100.4",
        "app": "shop",
        "team": "growth",
        "is_valid": False,
        "defaulted": True,
    }
    assert [dict(r) for r in rows] == [
        first,
        {**first, "event_id": "5f0c8d3e-8a4b-4c1e-9d2f-0a1b2c3d4e5f",
         "data": '{"items": [1, 2], "order": {"total": 12.5, "currency": "EUR"}}', "total": "12.5"},
    ]  # fmt: skip


async def test_create_table_in_a_schema_with_a_mapping(postgres_dsn: str, db: Any) -> None:
    schema = f"analytics_{uuid.uuid4().hex[:8]}"
    await db.execute(f'CREATE SCHEMA "{schema}"')
    try:
        sink = make_sink(
            postgres_dsn, f"{schema}.events", create_table=True,
            columns={"id": "event_id", "collector_tstamp": "at", "payload": "data", "source.user_agent": "ua"},
        )  # fmt: skip
        await sink.open()
        try:
            await write(sink, [envelope()])
        finally:
            await sink.aclose()
        columns = await db.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 "
            "AND table_name = 'events' ORDER BY ordinal_position",
            schema,
        )
        assert [(c["column_name"], c["data_type"]) for c in columns] == [
            ("event_id", "uuid"), ("at", "timestamp with time zone"), ("data", "jsonb"), ("ua", "text"),
        ]  # fmt: skip
        assert await db.fetchval(f'SELECT ua FROM "{schema}".events') == "curl/8"
    finally:
        await db.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_a_redelivered_batch_is_stored_once(postgres_dsn: str, db: Any, table: str) -> None:
    envelopes = sample_envelopes(40)
    sink = make_sink(postgres_dsn, table, create_table=True)  # on_conflict auto: the id is the key
    await sink.open()
    try:
        assert sink.ignore_conflicts
        await write(sink, envelopes[:30])
        # A retry after a lost answer, overlapping with new events, and a duplicate inside one batch.
        await write(sink, envelopes[20:40] + envelopes[35:36])
    finally:
        await sink.aclose()
    ids = [r["id"] for r in await db.fetch(f'SELECT id::text FROM "{table}" ORDER BY id')]
    assert ids == sorted(e.id for e in envelopes)


async def test_plain_copy_into_a_keyed_table_fails_a_duplicate_batch_as_fatal(
    postgres_dsn: str, db: Any, table: str
) -> None:
    envelopes = sample_envelopes(3)
    sink = make_sink(postgres_dsn, table, create_table=True, on_conflict="none")
    await sink.open()
    try:
        assert not sink.ignore_conflicts
        await write(sink, envelopes)
        with pytest.raises(FatalError) as caught:
            await write(sink, envelopes[2:] + sample_envelopes(5)[3:])
        assert "UniqueViolationError" in str(caught.value)
        assert "set on_conflict: ignore" in str(caught.value)
    finally:
        await sink.aclose()
    assert await db.fetchval(f'SELECT count(*) FROM "{table}"') == 3  # nothing of the failed batch


async def test_plain_copy_into_an_unkeyed_table_keeps_duplicates(postgres_dsn: str, db: Any, table: str) -> None:
    await db.execute(f'CREATE TABLE "{table}" (id uuid, payload jsonb)')
    sink = make_sink(postgres_dsn, table, columns={"id": "id", "payload": "payload"})
    await sink.open()
    try:
        assert not sink.ignore_conflicts  # auto, and no key: plain COPY
        envelopes = sample_envelopes(2)
        await write(sink, envelopes)
        await write(sink, envelopes)
    finally:
        await sink.aclose()
    assert await db.fetchval(f'SELECT count(*) FROM "{table}"') == 4


async def test_a_row_the_table_refuses_is_fatal_and_names_it(postgres_dsn: str, db: Any, table: str) -> None:
    await db.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, schema varchar(5))')
    sink = make_sink(postgres_dsn, table, columns={"id": "id", "schema": "schema"})
    await sink.open()
    try:
        with pytest.raises(FatalError) as caught:
            await write(sink, sample_envelopes(1))
        assert "value too long for type character varying(5)" in str(caught.value)
        assert f'"{table}"' in str(caught.value)
    finally:
        await sink.aclose()


# --- errors at start ---------------------------------------------------------------------------------


async def test_start_errors_say_what_is_wrong(postgres_dsn: str, db: Any, table: str) -> None:
    async def start_error(**fields: Any) -> str:
        sink = make_sink(postgres_dsn, table, **fields)
        with pytest.raises(PostgresSinkError) as caught:
            await sink.open()
        await sink.aclose()
        return str(caught.value)

    assert await start_error() == (f'sink pg: table "{table}" does not exist; create it or set create_table: true')
    await db.execute(f'CREATE TABLE "{table}" (id uuid, at timestamptz, n integer)')
    assert await start_error(columns={"id": "id", "collector_tstamp": "collected"}) == (
        f"sink pg: table \"{table}\" has no column 'collected' (for collector_tstamp); its columns: id, at, n"
    )
    assert await start_error(columns={"id": "id", "payload": "n"}) == (
        f"sink pg: column 'n' of \"{table}\" is int4; payload (json) can be written to bpchar, citext, json, "
        "jsonb, name, text, varchar"
    )
    assert await start_error(columns={"id": "id"}, on_conflict="ignore") == (
        f"sink pg: on_conflict: ignore needs a primary key or unique index on column 'id' of \"{table}\"; "
        "add one, or set on_conflict: none"
    )


async def test_an_unreachable_server_at_start_is_one_clear_error() -> None:
    port = free_port()
    sink = make_sink(f"postgresql://streamer:s3cret-pw@127.0.0.1:{port}/events", "events", connect_timeout=2)
    with pytest.raises(PostgresSinkError) as caught:
        await sink.open()
    message = str(caught.value)
    assert message.startswith(f"sink pg: cannot connect to PostgreSQL at postgresql://streamer:***@127.0.0.1:{port}/")
    assert "s3cret-pw" not in message


def test_hostile_names_are_refused_when_the_pipeline_is_compiled() -> None:
    text = """\
inputs:
  web: {type: http, port: 0}
sinks:
  pg:
    type: postgres
    dsn: postgresql://postgres@127.0.0.1/test
    table: 'x"; drop table y; --'
    columns:
      id: 'id"; drop table y; --'
      payload.a: data
      nope: other
      schema: data
"""
    with pytest.raises(ConfigError) as caught:
        compile_text(text, {})
    problems = [str(p) for p in caught.value.problems]
    assert problems[0] == (
        "test.yml:7:12: 'x\"; drop table y; --' is not a table name; write name or schema.name (letters, digits, _)"
    )
    assert problems[1].startswith("test.yml:9:11: 'id\"; drop table y; --' is not a column name: use letters, digits")
    assert problems[2].startswith("test.yml:11:13: 'nope' is not an envelope field; use one of")
    assert problems[3] == "test.yml:12:15: column 'data' is already written from 'payload.a'"
    assert len(problems) == 4


# --- through the CLI ---------------------------------------------------------------------------------

PIPELINE = """\
inputs:
  web: {{type: http, port: 0}}
sinks:
  pg:
    type: postgres
    dsn: {dsn}
    table: {table}
    connect_timeout: 2
    columns: {{id: id, collector_tstamp: {column}}}
"""


def run_cli(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "pipeline.yml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "streamer", "run", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR " in line or "Traceback" in line]


async def test_cli_unknown_column_is_one_line_at_start(postgres_dsn: str, db: Any, table: str, tmp_path: Path) -> None:
    await db.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, collected_at timestamptz)')
    # The password is ignored by a trust server, and must not show up anywhere.
    dsn = "postgresql://postgres:pw-never-logged@127.0.0.1:5432/test"
    done = run_cli(tmp_path, PIPELINE.format(dsn=dsn, table=table, column="collected"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "pw-never-logged" not in done.stderr + done.stdout
    assert [line.split(" ERROR ", 1)[1] for line in error_lines(done.stderr)] == [
        f"streamer: pipeline failed: sink pg: table \"{table}\" has no column 'collected' "
        "(for collector_tstamp); its columns: id, collected_at"
    ]


async def test_cli_unreachable_server_is_one_line_at_start(tmp_path: Path) -> None:
    port = free_port()
    dsn = f"postgresql://postgres:pw-never-logged@127.0.0.1:{port}/test"
    done = run_cli(tmp_path, PIPELINE.format(dsn=dsn, table="events", column="at"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "pw-never-logged" not in done.stderr + done.stdout
    [line] = error_lines(done.stderr)
    assert (
        f"streamer: pipeline failed: sink pg: cannot connect to PostgreSQL at "
        f"postgresql://postgres:***@127.0.0.1:{port}/test: " in line
    )
    assert json.dumps(line)  # one line


# --- what each failure means ---------------------------------------------------------------------------


def _postgres_error(name: str) -> BaseException:
    import asyncpg

    cls: type[BaseException] = getattr(asyncpg.exceptions, name)
    return cls("server said no")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        ("AdminShutdownError", True),  # the server is shutting down (a restart)
        ("CannotConnectNowError", True),  # it is starting up
        ("ConnectionDoesNotExistError", True),
        ("ConnectionFailureError", True),
        ("QueryCanceledError", True),  # statement_timeout
        ("DeadlockDetectedError", True),
        ("SerializationError", True),
        ("TooManyConnectionsError", True),
        ("LockNotAvailableError", True),
        ("UniqueViolationError", False),
        ("NotNullViolationError", False),
        ("StringDataRightTruncationError", False),
        ("InvalidTextRepresentationError", False),
        ("UndefinedColumnError", False),
        ("UndefinedTableError", False),
        ("InsufficientPrivilegeError", False),
    ],
)
def test_server_errors_are_classified(error: str, retryable: bool) -> None:
    from streamer.core.errors import RetryableError
    from streamer.postgres.sink import classify

    mapped = classify(_postgres_error(error), '"events"', "postgresql://u:pw@h/d")
    assert isinstance(mapped, RetryableError if retryable else FatalError)
    assert str(mapped).startswith(f'write to "events" failed: {error}: server said no')


def test_client_side_errors_are_classified() -> None:
    import asyncpg

    from streamer.core.errors import RetryableError
    from streamer.postgres.sink import classify

    dsn = "postgresql://u:pw-secret@h/d"
    for exc, expected in [
        (ConnectionRefusedError(111, "Connect call failed"), RetryableError),
        (TimeoutError(), RetryableError),
        (asyncpg.InterfaceError("connection is closed"), RetryableError),
        (ValueError("invalid UUID 'x'"), FatalError),  # a value the column's codec cannot take
        (OSError(f"cannot reach {dsn}"), RetryableError),
    ]:
        mapped = classify(exc, '"events"', dsn)
        assert type(mapped) is expected, exc
        assert "pw-secret" not in str(mapped)


async def test_an_event_with_a_nul_character_fails_alone(postgres_dsn: str, db: Any, table: str) -> None:
    from streamer.core.errors import BatchError

    await db.execute(f'CREATE TABLE "{table}" (id uuid PRIMARY KEY, protocol text, payload jsonb)')
    sink = make_sink(postgres_dsn, table, columns={"id": "id", "protocol": "protocol", "payload": "payload"})
    await sink.open()
    try:
        envelopes = sample_envelopes(6)
        envelopes[1].payload = {"text": "a\x00b"}  # jsonb cannot hold \u0000
        envelopes[4].protocol = "raw\x00"  # text cannot hold a NUL byte
        with pytest.raises(BatchError) as caught:
            await write(sink, envelopes)
        assert caught.value.failed == [1, 4]
        assert not caught.value.retryable
        assert "2 of 6 events hold a NUL character" in str(caught.value)
    finally:
        await sink.aclose()
    stored = [r["id"] for r in await db.fetch(f'SELECT id::text FROM "{table}" ORDER BY id')]
    assert stored == [e.id for i, e in enumerate(envelopes) if i not in (1, 4)]
