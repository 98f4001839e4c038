"""Schemas in a PostgreSQL table, so that the destination database can be the registry too.

The table holds one row per schema version::

    CREATE TABLE iglu_schemas (
        uri        text        PRIMARY KEY,      -- iglu:com.acme/checkout/jsonschema/1-0-0
        schema     jsonb       NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );

With ``create_table: true`` it is created when missing. If a table without the
primary key holds several rows for one URI, the newest ``created_at`` wins. The
connection is made on first use (and again after a failure), so a database that
is down at start only makes lookups fail as "registry unavailable" until it is
back. Uses asyncpg, so it runs on asyncio only.

Example::

    registry:
      repositories:
        - type: postgres
          dsn: postgresql://streamer@db.internal/events
          table: iglu.schemas
          create_table: true
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

import anyio
import msgspec

from streamer.core.components import ASYNCIO_ONLY
from streamer.core.config import PathT
from streamer.core.registry import Repository, RepositorySpec, RepositoryUnavailable, SchemaKey
from streamer.postgres.settings import (
    Dsn,
    PostgresConnection,
    SslCert,
    SslKey,
    SslMode,
    SslRootCert,
    check_connection,
    create_pool,
    describe,
    quote_table,
)

__all__ = ["PostgresRepository", "PostgresRepositorySpec"]


class PostgresRepositorySpec(RepositorySpec, tag="postgres", kw_only=True):
    """A table of (uri, schema jsonb, created_at) in PostgreSQL."""

    dsn: Dsn
    table: Annotated[
        str,
        msgspec.Meta(description="Table name, optionally schema-qualified.", examples=["iglu_schemas", "iglu.schemas"]),
    ] = "iglu_schemas"
    create_table: Annotated[
        bool, msgspec.Meta(description="Create the table (not the schema) when it does not exist.", examples=[True])
    ] = False
    timeout: Annotated[
        float,
        msgspec.Meta(gt=0, description="Seconds allowed to connect and for each query.", examples=[5]),
    ] = 5.0
    ssl_mode: SslMode = None
    ssl_root_cert: SslRootCert = None
    ssl_cert: SslCert = None
    ssl_key: SslKey = None

    def connection(self) -> PostgresConnection:
        """The shared connection settings: a pool of two, ``timeout`` to connect and per query."""
        return PostgresConnection(
            dsn=self.dsn,
            pool_min_size=1,
            pool_max_size=2,
            connect_timeout=self.timeout,
            statement_timeout=self.timeout,
            ssl_mode=self.ssl_mode,
            ssl_root_cert=self.ssl_root_cert,
            ssl_cert=self.ssl_cert,
            ssl_key=self.ssl_key,
        )

    def check(self) -> Iterator[tuple[PathT, str]]:
        try:
            quote_table(self.table)
        except ValueError as exc:
            yield ("table",), str(exc)
        yield from check_connection(self.connection())


class PostgresRepository(Repository):
    Spec = PostgresRepositorySpec
    spec: PostgresRepositorySpec
    backends = ASYNCIO_ONLY
    requires = ("asyncpg",)
    extra = "postgres"
    backend_reason = "uses asyncpg"

    def __init__(self, name: str, spec: PostgresRepositorySpec, context: Any) -> None:
        super().__init__(name, spec, context)
        self.table = quote_table(spec.table)
        self._query = f'SELECT "schema"::text FROM {self.table} WHERE uri = $1 ORDER BY created_at DESC LIMIT 1'
        self._pool: Any = None
        self._lock = anyio.Lock()

    def create_statement(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self.table} ("
            'uri text PRIMARY KEY, "schema" jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())'
        )

    async def open(self) -> None:
        await self._ensure_pool()

    async def _ensure_pool(self) -> Any:
        async with self._lock:
            if self._pool is None:
                import asyncpg

                connection = self.spec.connection()
                try:
                    pool = await create_pool(connection)
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    raise RepositoryUnavailable(
                        f"cannot connect to PostgreSQL at {connection.where}: {describe(exc, connection.dsn)}"
                    ) from exc
                if self.spec.create_table:
                    try:
                        await pool.execute(self.create_statement())
                    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        await pool.close()
                        raise RepositoryUnavailable(
                            f"cannot create table {self.table}: {describe(exc, self.spec.dsn)}"
                        ) from exc
                self._pool = pool
            return self._pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(self.spec.timeout):
                await pool.close()
                return
            pool.terminate()

    async def fetch(self, key: SchemaKey) -> bytes | None:
        import asyncpg

        pool = await self._ensure_pool()
        try:
            row = await pool.fetchval(self._query, key.uri, timeout=self.spec.timeout)
        except asyncpg.UndefinedTableError as exc:
            raise RepositoryUnavailable(
                f"table {self.table} does not exist; create it or set create_table: true"
            ) from exc
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise RepositoryUnavailable(f"query on {self.table} failed: {describe(exc, self.spec.dsn)}") from exc
        if row is None:
            return None
        text: str = row
        return text.encode()
