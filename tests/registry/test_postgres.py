"""The postgres repository against the local PostgreSQL (asyncio only: asyncpg)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamer.core.registry import RepositoryUnavailable, SchemaKey, SchemaNotFound, SchemaResolver
from streamer.postgres.registry import PostgresRepository, PostgresRepositorySpec
from tests.registry.conftest import free_port, object_schema

pytestmark = [pytest.mark.anyio, pytest.mark.services]

URI = "iglu:com.acme/checkout/jsonschema/1-0-0"
KEY = SchemaKey.parse(URI)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def table(db: Any) -> AsyncIterator[str]:
    name = f"iglu_test_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{name}"')


def repo(dsn: str, table: str, **fields: Any) -> PostgresRepository:
    return PostgresRepository("0", PostgresRepositorySpec(dsn=dsn, table=table, timeout=2, **fields), None)


async def upsert(db: Any, table: str, uri: str, document: Any) -> None:
    await db.execute(
        f'INSERT INTO "{table}" (uri, schema) VALUES ($1, $2::jsonb) '
        "ON CONFLICT (uri) DO UPDATE SET schema = excluded.schema, created_at = now()",
        uri,
        json.dumps(document),
    )


async def test_creates_the_table_and_reads_schemas(postgres_dsn: str, db: Any, table: str) -> None:
    resolver = SchemaResolver([repo(postgres_dsn, table, create_table=True)])
    await resolver.open()
    try:
        columns = await db.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1 ORDER BY 1", table
        )
        assert [(c["column_name"], c["data_type"]) for c in columns] == [
            ("created_at", "timestamp with time zone"),
            ("schema", "jsonb"),
            ("uri", "text"),
        ]
        await upsert(db, table, URI, object_schema(URI, a={"type": "string"}))
        entry = await resolver.resolve(URI)
        assert entry.validator.is_valid({"a": "x"}) and not entry.validator.is_valid({})
        missing = await resolver.resolve("iglu:com.acme/missing/jsonschema/1-0-0")
        assert isinstance(missing.error, SchemaNotFound)
        # Changed in the table: seen after a purge, not before.
        await upsert(db, table, URI, object_schema(URI, b={"type": "string"}))
        assert (await resolver.resolve(URI)).validator.is_valid({"a": "x"})
        resolver.purge()
        assert (await resolver.resolve(URI)).validator.is_valid({"b": "x"})
    finally:
        await resolver.aclose()


async def test_schema_qualified_table(postgres_dsn: str, db: Any) -> None:
    schema = f"iglu_{uuid.uuid4().hex[:8]}"
    await db.execute(f'CREATE SCHEMA "{schema}"')
    try:
        repository = repo(postgres_dsn, f"{schema}.schemas", create_table=True)
        try:
            await repository.open()
            await db.execute(
                f'INSERT INTO "{schema}".schemas (uri, schema) VALUES ($1, $2::jsonb)', URI, json.dumps({})
            )
            assert await repository.fetch(KEY) == b"{}"
        finally:
            await repository.aclose()
    finally:
        await db.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def test_a_missing_table_says_how_to_fix_it(postgres_dsn: str, table: str) -> None:
    repository = repo(postgres_dsn, table)
    try:
        with pytest.raises(RepositoryUnavailable) as caught:
            await repository.fetch(KEY)
        assert f'table "{table}" does not exist; create it or set create_table: true' in str(caught.value)
    finally:
        await repository.aclose()


async def test_a_database_that_is_down_is_unavailable_and_retried(postgres_dsn: str, db: Any, table: str) -> None:
    port = free_port()
    down = repo(f"postgresql://postgres@127.0.0.1:{port}/test", table, create_table=True)
    resolver = SchemaResolver([down], negative_ttl=0)
    await resolver.open()  # logs, does not raise
    try:
        entry = await resolver.resolve(URI)
        assert isinstance(entry.error, RepositoryUnavailable)
        assert "cannot connect to PostgreSQL" in str(entry.error)
        # The same repository, once its database is reachable, connects on the next lookup.
        down.spec.dsn = postgres_dsn
        await db.execute(f'CREATE TABLE "{table}" (uri text PRIMARY KEY, schema jsonb, created_at timestamptz)')
        await db.execute(f'INSERT INTO "{table}" VALUES ($1, $2::jsonb, now())', URI, json.dumps(object_schema(URI)))
        assert (await resolver.resolve(URI)).error is None
    finally:
        await resolver.aclose()
