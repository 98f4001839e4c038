"""Fixtures for the postgres_cdc tests: a throwaway cluster with wal_level=logical (one per session),
a fresh database per test, and helpers to run SQL and wait for changes to land."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from streamer.postgres.replication import PgConnection
from tests.cdc.cluster import Cluster, cluster_available, start_cluster
from tests.support import need_service


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    available, why = cluster_available()
    need_service(available, "a throwaway PostgreSQL 15 cluster", why)
    started = start_cluster()
    try:
        yield started
    finally:
        started.stop()


class Database:
    """One database of the throwaway cluster, and SQL on it over streamer's own client."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self.dsn = f"postgresql://postgres@127.0.0.1:{cluster.port}/{name}"

    async def execute(self, sql: str) -> list[list[str | None]]:
        connection = await PgConnection.connect(self.dsn)
        try:
            results = await connection.query(sql)
        finally:
            await connection.aclose()
        return results[-1].rows if results else []

    async def value(self, sql: str) -> str | None:
        rows = await self.execute(sql)
        return rows[0][0] if rows else None

    async def confirmed_flush(self, slot: str) -> int:
        from streamer.postgres.replication import parse_lsn

        text = await self.value(f"SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")
        return parse_lsn(text) if text else 0


@pytest.fixture
def database(cluster: Cluster) -> Iterator[Database]:
    name = f"cdc_{uuid.uuid4().hex[:12]}"
    cluster.psql(f"CREATE DATABASE {name}")
    try:
        yield Database(cluster, name)
    finally:
        cluster.psql(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = '{name}'")
        cluster.psql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
async def db(database: Database) -> AsyncIterator[Database]:
    yield database


def read_changes(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open("rb") as file:
        return [json.loads(line) for line in file if line.endswith(b"\n")]


async def wait_lines(path: Path, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    """The envelopes in ``path`` once there are at least ``count`` (fails after ``timeout``)."""
    with anyio.fail_after(timeout):
        while not path.exists() or path.read_bytes().count(b"\n") < count:  # noqa: ASYNC110 - a file has no event
            await anyio.sleep(0.05)
    return read_changes(path)


def leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]
