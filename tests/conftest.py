"""Shared fixtures: both anyio backends, and the local PostgreSQL the connector tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support import PG_DSN, need_service, port_open

pytest_plugins = ["anyio"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def asyncio_only() -> str:
    """Use as ``anyio_backend`` override in modules whose connectors only run on asyncio."""
    return "asyncio"


@pytest.fixture
def postgres_dsn() -> str:
    """The machine's PostgreSQL (database ``test``); skips, or fails under CI, when it is not there."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        need_service(False, "asyncpg", "pip install 'streamer[postgres]'")
    need_service(
        port_open("127.0.0.1", 5432),
        "PostgreSQL on 127.0.0.1:5432 (database test, user postgres, trust auth)",
        "start a local PostgreSQL with a `test` database (scripts/setup/)",
    )
    return PG_DSN


@pytest.fixture
async def db(postgres_dsn: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection to :func:`postgres_dsn`, independent of any connector (jsonb as text)."""
    import asyncpg

    connection = await asyncpg.connect(postgres_dsn)
    try:
        yield connection
    finally:
        await connection.close()
