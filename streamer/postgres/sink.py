"""Events as rows of a PostgreSQL table, one binary COPY per batch.

Each envelope becomes one row. By default every envelope field has its own column, typed: ``id uuid``
(the primary key), ``collector_tstamp`` and ``event_tstamp timestamptz``, ``valid boolean``,
``protocol``, ``schema`` and its four parts ``text``, and ``source``, ``payload``, ``contexts``,
``atomic``, ``errors`` and ``tags`` as ``jsonb``. ``columns`` selects and renames: it maps an envelope
field, or a dotted path into one (``source.client_ip``, ``payload.order.total``, ``atomic.aid``,
``tags.team``), to a column name, and only those columns are written.

**Idempotent writes.** A batch that was written but not acknowledged (the process died, the answer
was lost and the write retried) is written again. With ``on_conflict: ignore``, the default when the
event id column is the table's primary key or unique, a batch is copied into a temporary table and
inserted with ``ON CONFLICT DO NOTHING`` in one transaction, so each event id is stored once. With
``none`` the batch is copied straight into the table (cheaper: see docs/performance.md): into a
table without a key a redelivered event is stored twice, and into a keyed table one duplicate id makes
the whole batch fail (a fatal error: no retry can fix it, the batch goes to the dead-letter sink).

**Failures.** A server that cannot be reached, restarts or is shutting down, a lost connection, a
statement past ``statement_timeout``, a deadlock or too many connections are retryable: the pool makes
a new connection on the next attempt, and inputs wait meanwhile (backpressure). A row the table
refuses (a value of the wrong type or too long, a NOT NULL or check constraint, a missing column or
privilege) is fatal. At start, an unreachable server, a missing table, an unknown column or a column
of a type the field cannot be written to stops the pipeline with one line saying which.

Table, schema and column names are checked (letters, digits, ``_``) when the pipeline is compiled and
always quoted in SQL. Uses asyncpg, so it runs on asyncio only.

Example::

    sinks:
      warehouse:
        type: postgres
        dsn: ${PG_DSN}
        table: analytics.events
        create_table: true
        columns:
          id: event_id
          collector_tstamp: collected_at
          schema: schema
          payload: data
          contexts: contexts
          source.client_ip: client_ip
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any, ClassVar, Literal

import anyio
import msgspec

from streamer.core.components import ASYNCIO_ONLY, Batch, Context, Sink, SinkSpec
from streamer.core.config import PathT
from streamer.core.envelope import Envelope
from streamer.core.errors import BatchError, FatalError, RetryableError, SinkError, StartupError
from streamer.postgres.rows import (
    DEFAULT_COLUMNS,
    NOT_NULL,
    WRITABLE,
    Column,
    converter,
    field_kind,
    rows_builder,
    unstorable,
)
from streamer.postgres.settings import (
    ConnectTimeout,
    Dsn,
    PoolMaxSize,
    PoolMinSize,
    PostgresConnection,
    SslCert,
    SslKey,
    SslMode,
    SslRootCert,
    StatementTimeout,
    check_connection,
    check_identifier,
    connect,
    create_pool,
    describe,
    quote_identifier,
    quote_table,
)

__all__ = ["PostgresSink", "PostgresSinkError", "PostgresSinkSpec", "classify"]

_STAGE = "_streamer_stage"
_UNSTORABLE_SQLSTATES = frozenset({"22021", "22P05"})
"""character_not_in_repertoire (a NUL byte in text), untranslatable_character (``\\u0000`` in jsonb)."""


class PostgresSinkSpec(SinkSpec, tag="postgres", kw_only=True):
    """Rows of a PostgreSQL table, written with binary COPY; idempotent on the event id."""

    dsn: Dsn
    table: Annotated[
        str,
        msgspec.Meta(description="Table name, optionally schema-qualified.", examples=["events", "analytics.events"]),
    ]
    columns: Annotated[
        dict[str, str] | None,
        msgspec.Meta(
            description="Envelope field (or a dotted path into `source`, `payload`, `atomic` or `tags`) -> column "
            "name; only these columns are written. Default: every envelope field, each in a column of its name.",
            examples=[{"id": "event_id", "collector_tstamp": "collected_at", "payload": "data"}],
        ),
    ] = None
    create_table: Annotated[
        bool,
        msgspec.Meta(
            description="Create the table (not its schema) when it does not exist, with a column per mapped "
            "field, typed, and the event id as primary key.",
            examples=[True],
        ),
    ] = False
    on_conflict: Annotated[
        Literal["auto", "ignore", "none"],
        msgspec.Meta(
            description="`ignore`: an event id already in the table is skipped (a COPY into a temporary table, "
            "then INSERT ... ON CONFLICT DO NOTHING), so redelivered events are stored once; it needs the id "
            "column to be the primary key or unique. `none`: plain COPY, faster; a duplicate id fails the "
            "batch on a keyed table and is stored twice on an unkeyed one. `auto`: `ignore` when the id "
            "column is unique, else `none`.",
            examples=["ignore"],
        ),
    ] = "auto"
    pool_min_size: PoolMinSize = 1
    pool_max_size: PoolMaxSize = 4
    connect_timeout: ConnectTimeout = 10.0
    statement_timeout: StatementTimeout = 30.0
    ssl_mode: SslMode = None
    ssl_root_cert: SslRootCert = None
    ssl_cert: SslCert = None
    ssl_key: SslKey = None

    def connection(self) -> PostgresConnection:
        return PostgresConnection(
            dsn=self.dsn,
            pool_min_size=self.pool_min_size,
            pool_max_size=self.pool_max_size,
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout,
            ssl_mode=self.ssl_mode,
            ssl_root_cert=self.ssl_root_cert,
            ssl_cert=self.ssl_cert,
            ssl_key=self.ssl_key,
        )

    @property
    def mapping(self) -> dict[str, str]:
        """Envelope path -> column, in order."""
        return DEFAULT_COLUMNS if self.columns is None else self.columns

    def check(self) -> Iterator[tuple[PathT, str]]:
        try:
            quote_table(self.table)
        except ValueError as exc:
            yield ("table",), str(exc)
        if self.columns is not None:
            if not self.columns:
                yield ("columns",), "`columns` maps no field; leave it out to write every envelope field"
            seen: dict[str, str] = {}
            for path, column in self.columns.items():
                try:
                    field_kind(path)
                except ValueError as exc:
                    yield ("columns", path), str(exc)
                try:
                    check_identifier(column)
                except ValueError as exc:
                    yield ("columns", path), str(exc)
                    continue
                if column in seen:
                    yield ("columns", path), f"column {column!r} is already written from {seen[column]!r}"
                seen[column] = path
            if self.on_conflict == "ignore" and "id" not in self.columns:
                yield ("on_conflict",), "`on_conflict: ignore` needs the event id in a column: map `id` in `columns`"
        yield from check_connection(self.connection())


class PostgresSinkError(StartupError):
    """The sink cannot start: the server, the table or the mapping is not what the config says."""


_RETRYABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
"""Connection exception, transaction rollback (deadlock, serialization), insufficient resources, object
not in prerequisite state (lock not available), operator intervention (shutdown, cancel, statement
timeout), system error, internal error. Everything else the server says is about the data or the
schema: fatal."""


def classify(exc: BaseException, where: str, dsn: str) -> SinkError:
    """The :mod:`streamer.core.errors` class an asyncpg or OS error out of a write belongs to."""
    import asyncpg

    message = f"write to {where} failed: {describe(exc, dsn)}"
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state[:2] in _RETRYABLE_SQLSTATE_CLASSES:
            return RetryableError(message)
        if state == "23505":
            message += " (a duplicate event id: set on_conflict: ignore to skip events already stored)"
        return FatalError(message)
    if isinstance(exc, asyncpg.exceptions.DataError | msgspec.EncodeError | TypeError | ValueError):
        # asyncpg's client-side DataError: a value its codec for the column cannot encode.
        return FatalError(message)
    # OSError (refused, reset), TimeoutError, InterfaceError (connection closed, pool closing), and
    # anything else: a later attempt on a new connection may succeed.
    return RetryableError(message)


class PostgresSink(Sink):
    Spec = PostgresSinkSpec
    spec: PostgresSinkSpec
    backends = ASYNCIO_ONLY
    backend_reason = "uses asyncpg"
    requires = ("asyncpg",)
    extra = "postgres"
    encoding: ClassVar[Literal["none"]] = "none"

    def __init__(self, name: str, spec: PostgresSinkSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        self.table = quote_table(spec.table)
        schema, _, table = spec.table.rpartition(".")
        self._schema_name: str | None = schema or None
        self._table_name = table
        self.columns = [Column(path, name) for path, name in spec.mapping.items()]
        self._names = [c.name for c in self.columns]
        self._connection = spec.connection()
        self._pool: Any = None
        self.ignore_conflicts = False
        """Whether batches go through the temporary table and ON CONFLICT DO NOTHING (set by :meth:`open`)."""
        self._rows: Callable[[list[Envelope]], list[Any]] = rows_builder(self.columns)
        quoted = ", ".join(quote_identifier(c.name) for c in self.columns)
        self._insert = f"INSERT INTO {self.table} ({quoted}) SELECT {quoted} FROM {_STAGE} ON CONFLICT DO NOTHING"

    def create_statement(self) -> str:
        parts = []
        key = None
        for column in self.columns:
            null = " NOT NULL" if column.path in NOT_NULL else ""
            parts.append(f"{quote_identifier(column.name)} {column.type}{null}")
            if column.path == "id":
                key = column.name
        if key is not None:
            parts.append(f"PRIMARY KEY ({quote_identifier(key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(parts)})"

    async def open(self) -> None:
        import asyncpg

        connection = self._connection
        failures = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        try:
            con = await connect(connection)
        except failures as exc:
            raise PostgresSinkError(
                f"sink {self.name}: cannot connect to PostgreSQL at {connection.where}: {describe(exc, connection.dsn)}"
            ) from exc
        try:
            try:
                if self.spec.create_table:
                    await con.execute(self.create_statement())
                types, unique = await self._inspect(con)
            except PostgresSinkError:
                raise
            except failures as exc:
                raise PostgresSinkError(
                    f"sink {self.name}: table {self.table}: {describe(exc, connection.dsn)}"
                ) from exc
        finally:
            await con.close()
        self._adapt(types, unique)
        try:
            # The sink changes no session state, so a released connection needs no reset query: that is a
            # round trip per batch saved (~10% of a plain COPY of 500 rows).
            self._pool = await create_pool(connection, init=self._init_connection, reset=_no_reset)
        except failures as exc:
            raise PostgresSinkError(
                f"sink {self.name}: cannot connect to PostgreSQL at {connection.where}: {describe(exc, connection.dsn)}"
            ) from exc

    async def _inspect(self, con: Any) -> tuple[dict[str, str], set[str]]:
        """The table's column types (``pg_type.typname``) and the columns unique on their own."""
        relation = await con.fetchval("SELECT to_regclass($1)::oid", self.table)
        if relation is None:
            raise PostgresSinkError(
                f"sink {self.name}: table {self.table} does not exist; create it or set create_table: true"
            )
        rows = await con.fetch(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            relation,
        )
        unique = await con.fetch(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = i.indkey[0] WHERE i.indrelid = $1 AND i.indisunique AND i.indnkeyatts = 1 "
            "AND i.indpred IS NULL",
            relation,
        )
        return {r["attname"]: r["typname"] for r in rows}, {r["attname"] for r in unique}

    def _adapt(self, types: dict[str, str], unique: set[str]) -> None:
        """Check the mapping against the table and pick each column's conversion; decide on conflicts."""
        for column in self.columns:
            column_type = types.get(column.name)
            if column_type is None:
                raise PostgresSinkError(
                    f"sink {self.name}: table {self.table} has no column {column.name!r} (for {column.path}); "
                    f"its columns: {', '.join(types) or 'none'}"
                )
            if column_type not in WRITABLE[column.kind]:
                raise PostgresSinkError(
                    f"sink {self.name}: column {column.name!r} of {self.table} is {column_type}; {column.path} "
                    f"({column.kind}) can be written to {', '.join(sorted(WRITABLE[column.kind]))}"
                )
            column.convert = converter(column.kind, column_type)
        self._rows = rows_builder(self.columns)
        id_column = next((c.name for c in self.columns if c.path == "id"), None)
        keyed = id_column is not None and id_column in unique
        if self.spec.on_conflict == "ignore" and not keyed:
            raise PostgresSinkError(
                f"sink {self.name}: on_conflict: ignore needs a primary key or unique index on column "
                f"{id_column!r} of {self.table}; add one, or set on_conflict: none"
            )
        self.ignore_conflicts = keyed and self.spec.on_conflict != "none"

    async def _init_connection(self, con: Any) -> None:
        # jsonb values are handed over already encoded (msgspec, with jsonb's version byte): no str round trip.
        await con.set_type_codec("jsonb", encoder=_identity, decoder=_identity, schema="pg_catalog", format="binary")
        if self.ignore_conflicts:
            # One staging table per connection, emptied at each commit: no catalog churn per batch.
            await con.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (LIKE {self.table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )

    async def write(self, batch: Batch) -> None:
        envelopes = batch.envelopes
        if not envelopes:
            return
        if self._pool is None:
            raise RetryableError(f"sink {self.name} is not open")
        try:
            rows = self._rows(envelopes)
        except Exception as exc:
            raise classify(exc, self.table, self.spec.dsn) from exc
        try:
            await self._copy(rows)
            return
        except Exception as exc:
            if getattr(exc, "sqlstate", None) not in _UNSTORABLE_SQLSTATES:
                raise classify(exc, self.table, self.spec.dsn) from exc
            error = exc
        # A NUL character, which PostgreSQL cannot store in text or jsonb, failed the whole COPY. Only
        # now (nothing is checked on the way in) find the rows holding one, write the others, and name
        # those rows as failed for good: one client's bad string must not fail its batch-mates.
        bad = set(unstorable(rows))
        if not bad:
            raise classify(error, self.table, self.spec.dsn) from error
        good = [row for index, row in enumerate(rows) if index not in bad]
        if good:
            try:
                await self._copy(good)
            except Exception as exc:
                raise classify(exc, self.table, self.spec.dsn) from exc
        reason = "a NUL character (\\u0000), which PostgreSQL cannot store in text or jsonb"
        raise BatchError(
            f"write to {self.table}: {len(bad)} of {len(rows)} events hold {reason}; the others are written",
            sorted(bad),
            retryable=False,
            errors=[f"holds {reason}"] * len(bad),
        )

    async def _copy(self, rows: list[Any]) -> None:
        async with self._pool.acquire() as con:
            if self.ignore_conflicts:
                async with con.transaction():
                    await con.copy_records_to_table(_STAGE, records=rows, columns=self._names)
                    await con.execute(self._insert)
            else:
                await con.copy_records_to_table(
                    self._table_name, schema_name=self._schema_name, records=rows, columns=self._names
                )

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(self.spec.connect_timeout):
                await pool.close()
                return
            pool.terminate()


def _identity(value: Any) -> Any:
    return value


async def _no_reset(con: Any) -> None:
    pass
