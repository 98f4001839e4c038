"""A database's changes as events: PostgreSQL logical replication with the built-in ``pgoutput`` plugin.

Each inserted, updated or deleted row (and each truncated table) becomes one event, in commit order,
with the table, the operation, the new row (``after``), the old key or row (``before``), the change's
LSN, the commit time and the transaction id; see docs/inputs.md for the event and every guarantee.

- **Nothing to install on the server**: ``pgoutput`` ships with PostgreSQL (10+); the server needs
  ``wal_level=logical``, a free replication slot and a role with ``REPLICATION`` (and, for ``create``,
  the right to create the publication).
- **Nothing lost, resumable.** The slot's confirmed position moves (standby status updates) only to
  the end of the newest transaction whose every change the required sinks hold (an ordered
  checkpoint); after a crash or a restart, reading resumes from there, and the redelivered changes
  carry the same event ids (derived from the server, the slot and the change's place in its
  transaction), so an idempotent sink (``postgres`` with ``on_conflict: ignore``) stores each once.
- **Bounded memory.** A transaction is submitted in units of at most ``chunk_size`` rows while it is
  read; at most ``max_in_flight`` units await the sinks, then reading pauses (backpressure). Only the
  unit that ends a transaction carries its commit position.
- **Large transactions** are streamed by the server while they run (pgoutput protocol 2, PostgreSQL
  14+) and held in a temporary file until they commit (``streamer.postgres.spool``); rolled back, they
  make no event.
- **Quiet tables do not pin WAL.** When every unit is settled, the server's keepalives (which report
  how far it has read the WAL for this slot) are confirmed too, so writes to other tables move the slot.
- **Initial snapshot** (``snapshot: initial``, when the slot is created): existing rows as ``op: read``
  events, read in the snapshot the slot starts from, then the stream.

It speaks the replication protocol itself on anyio streams (``streamer.postgres.replication``), so it
runs on asyncio and trio and needs no client library. TLS is not supported by that client yet.

Example::

    inputs:
      orders:
        type: postgres_cdc
        dsn: ${POSTGRES_DSN}
        tables: [public.orders, public.customers]
        publication: streamer
        slot: streamer
        create: true
        snapshot: initial
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus

from streamer.core.checkpoint import Checkpointer
from streamer.core.components import Context, Input, InputSpec, Submit
from streamer.core.config import PathT
from streamer.core.envelope import Envelope, Source, schema_parts, utc_now
from streamer.postgres.pgoutput import Begin, Change, Commit, Decoder, Origin, Relation, Truncate, converter_for
from streamer.postgres.replication import (
    PgConnection,
    PgConnectionError,
    PgError,
    format_lsn,
    parse_keepalive,
    parse_lsn,
    quote_literal,
)
from streamer.postgres.settings import ConnectTimeout, Dsn, check_identifier, quote_table, redact_dsn
from streamer.postgres.spool import StreamSpool

__all__ = ["CHANGE_SCHEMA", "CdcError", "PostgresCdcInput", "PostgresCdcSpec"]

log = logging.getLogger("streamer")

CHANGE_SCHEMA = "iglu:io.streamer/change/jsonschema/1-0-0"
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_WAL_START = struct.Struct("!Q")
_ID_NAMESPACE = uuid.UUID("5f1c3a52-6c0b-4f0e-9d57-6a0c2c7e4b11")


def change_schema_document() -> dict[str, Any]:
    """``iglu:io.streamer/change/jsonschema/1-0-0``: the change event this input emits (served by the
    built-in repository)."""
    row = {"type": ["object", "null"]}
    lsn = {"type": "string", "pattern": "^[0-9A-F]{1,8}/[0-9A-F]{1,8}$"}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "description": "One row changed in a PostgreSQL table (or one table truncated), read by logical "
        "replication, or one existing row read by the initial snapshot (op: read).",
        "self": {"vendor": "io.streamer", "name": "change", "format": "jsonschema", "version": "1-0-0"},
        "type": "object",
        "properties": {
            "table": {"type": "string", "description": "schema.name"},
            "op": {"enum": ["read", "insert", "update", "delete", "truncate"]},
            "after": {**row, "description": "The new row (insert, update, read); null otherwise."},
            "before": {
                **row,
                "description": "The old key (update of a key column, delete), or the whole old row with "
                "REPLICA IDENTITY FULL; null when the server sent none.",
            },
            "key": {"type": "array", "items": {"type": "string"}, "description": "Replica identity columns."},
            "unchanged": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Columns holding an unchanged TOASTed value, which the server did not send "
                "(left out of after).",
            },
            "lsn": {**lsn, "description": "WAL position of the change (read: of the snapshot)."},
            "commit_lsn": {"anyOf": [lsn, {"type": "null"}], "description": "WAL position of the commit."},
            "commit_time": {"type": ["string", "null"], "format": "date-time"},
            "xid": {"type": ["integer", "null"], "minimum": 0},
            "origin": {"type": "string", "description": "Replication origin of the transaction, when set."},
        },
        "required": ["table", "op", "after", "before", "lsn", "commit_lsn", "commit_time", "xid"],
        "additionalProperties": False,
    }


class CdcError(Exception):
    """The replication set-up is not usable (a missing slot or publication, a wrong plugin...)."""


class PostgresCdcSpec(InputSpec, tag="postgres_cdc", kw_only=True):
    """Changes of PostgreSQL tables through logical replication (pgoutput): one event per row changed."""

    dsn: Dsn
    tables: Annotated[
        list[str],
        msgspec.Meta(
            description="Tables (`schema.name` or `name`, in `public`) the publication holds; an item may list "
            "several, comma-separated (`${CDC_TABLES}`). With `create`, "
            "the publication is created with them (empty: `FOR ALL TABLES`) and missing ones are added to it; "
            "without, they must already be in it.",
            examples=[["public.orders", "public.customers"]],
        ),
    ] = msgspec.field(default_factory=list)
    publication: Annotated[
        str, msgspec.Meta(description="Publication whose tables are streamed.", examples=["streamer"])
    ] = "streamer"
    slot: Annotated[
        str,
        msgspec.Meta(
            description="Logical replication slot: where the stream resumes. One reader per slot.",
            examples=["streamer_orders"],
        ),
    ] = "streamer"
    create: Annotated[
        bool,
        msgspec.Meta(
            description="Create the publication and the slot when missing. Otherwise their absence stops the "
            "input at start, with the SQL that creates them.",
            examples=[True],
        ),
    ] = False
    snapshot: Annotated[
        Literal["initial", "never"],
        msgspec.Meta(
            description="`initial`: when the slot is created, first read every existing row of the published "
            "tables as `op: read` events, in the snapshot the slot starts from, then stream the changes. "
            "A snapshot cut short (crash, stop) is redone from the start on the next run. `never`: changes only.",
            examples=["initial"],
        ),
    ] = "never"
    chunk_size: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Most rows in one unit (one acknowledgement): a larger transaction is submitted in "
            "several units while it is read, so it is never held in memory at once.",
            examples=[1000],
        ),
    ] = 1000
    max_in_flight: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Units that may await the required sinks at once; when reached, reading pauses "
            "(backpressure). Memory is bounded by about `max_in_flight` x `chunk_size` changes.",
            examples=[16],
        ),
    ] = 16
    streaming: Annotated[
        bool,
        msgspec.Meta(
            description="On PostgreSQL 14+, have the server stream a large transaction while it runs "
            "(pgoutput protocol 2) instead of decoding it to its own disk first: its changes are held in a "
            "temporary file here until it commits, and become events then (never if it aborts).",
            examples=[False],
        ),
    ] = True
    status_interval: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds between standby status updates that confirm settled changes to the server "
            "(the slot's `confirmed_flush_lsn`); one is also sent every 10 s however quiet the stream.",
            examples=[1],
        ),
    ] = 1.0
    numeric: Annotated[
        Literal["string", "number"],
        msgspec.Meta(
            description="`numeric` columns as strings (exact) or JSON numbers (float: about 15 significant "
            "digits; NaN and infinities stay strings).",
            examples=["number"],
        ),
    ] = "string"
    schema: Annotated[
        str,
        msgspec.Meta(
            description="Iglu URI every change event is validated against; the built-in schema describes the "
            "change event (table, op, after, before, lsn...).",
            examples=[CHANGE_SCHEMA],
        ),
    ] = CHANGE_SCHEMA
    table_schemas: Annotated[
        dict[str, str],
        msgspec.Meta(
            description="Iglu URI of the change events of a table (`schema.name`), instead of `schema`; "
            "it validates the whole change event, as the built-in one does.",
            examples=[{"public.orders": "iglu:com.acme/order_change/jsonschema/1-0-0"}],
        ),
    ] = msgspec.field(default_factory=dict)
    connect_timeout: ConnectTimeout = 10.0

    def check(self) -> Iterator[tuple[PathT, str]]:
        if not self.dsn.startswith(("postgresql://", "postgres://", "${")):
            yield ("dsn",), "`dsn` must be a postgresql:// URI"
        for key in ("slot", "publication"):
            try:
                check_identifier(getattr(self, key), key)
                if getattr(self, key) != getattr(self, key).lower():
                    yield (key,), f"`{key}` must be lower case (PostgreSQL folds unquoted names)"
            except ValueError as exc:
                yield (key,), str(exc)
        for index, item in enumerate(self.tables):
            for table in table_names([item]):
                try:
                    quote_table(table)
                except ValueError as exc:
                    yield ("tables", index), str(exc)
        for table, uri in self.table_schemas.items():
            if schema_parts(uri)[0] is None:
                yield ("table_schemas", table), f"{uri!r} is not an Iglu URI (iglu:vendor/name/format/M-R-A)"
        if schema_parts(self.schema)[0] is None:
            yield ("schema",), f"{self.schema!r} is not an Iglu URI (iglu:vendor/name/format/M-R-A)"


def table_names(items: list[str]) -> list[str]:
    """The tables of ``items``, where an item may list several, comma-separated (``${CDC_TABLES}``)."""
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def qualified(table: str) -> str:
    """``name`` -> ``public.name``; ``schema.name`` unchanged."""
    return table if "." in table else f"public.{table}"


class _Ids:
    """Deterministic event ids: the same on every redelivery of a change, unique across servers and slots.

    A UUIDv8 (RFC 9562's custom layout): 74 bits of a SHA-1 over (server, database, slot) and the
    transaction's commit LSN (or the snapshot's LSN), made once per transaction, then the row's index in
    it (48 bits). Formatting the index is all each row costs (a hash per row cost ~1 us more).
    """

    __slots__ = ("_base", "prefix")

    def __init__(self, identity: str) -> None:
        self._base = uuid.uuid5(_ID_NAMESPACE, identity).bytes
        self.prefix = ""
        """The transaction's part of its ids: an id is this and the row's index as 12 hex digits."""

    def start(self, place: str) -> None:
        h = hashlib.sha1(self._base + place.encode()).hexdigest()
        variant = "89ab"[int(h[16], 16) & 3]
        self.prefix = f"{h[:8]}-{h[8:12]}-8{h[13:16]}-{variant}{h[17:20]}-"

    def id(self, index: int) -> str:
        return f"{self.prefix}{index:012x}"


def _connection_lost(error: BaseException) -> BaseException | None:
    """The error, when ``error`` (or every error of a group) says the connection to the server is gone:
    the socket closed or failed, or the server ended the session (SQLSTATE class 08 connection
    exception, 57 operator intervention: shutdown, terminated backend)."""
    if isinstance(error, BaseExceptionGroup):
        found = [_connection_lost(inner) for inner in error.exceptions]
        return found[0] if found and all(found) else None
    if isinstance(error, PgConnectionError):
        return error
    if isinstance(error, PgError) and error.code[:2] in ("08", "57"):
        return error
    return None


def _commit_time(micros: int) -> datetime:
    return _PG_EPOCH + timedelta(microseconds=micros)


class PostgresCdcInput(Input):
    Spec = PostgresCdcSpec
    spec: PostgresCdcSpec

    def __init__(self, name: str, spec: PostgresCdcSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        self.tables = [qualified(t) for t in table_names(spec.tables)]
        self.checkpoint: Checkpointer[int] | None = None
        self.confirmed: int | None = None
        """The last position sent to the server as flushed."""
        self.snapshot_rows = 0
        self.changes = 0
        self._schemas = {qualified(t): uri for t, uri in spec.table_schemas.items()}
        self._table_schema: dict[str, tuple[str, str | None, str | None, str | None, str | None]] = {}
        self._receive_scope: anyio.CancelScope | None = None
        self._stopped = False

    # --- set-up ------------------------------------------------------------------------------------------

    async def _connect(self) -> PgConnection:
        try:
            return await PgConnection.connect(self.spec.dsn, replication=True, timeout=self.spec.connect_timeout)
        except PgError as exc:
            raise CdcError(f"cannot start replication on {redact_dsn(self.spec.dsn)}: {exc}") from exc

    async def _ensure_publication(self, connection: PgConnection) -> None:
        name = self.spec.publication
        found = await connection.execute(
            f"SELECT puballtables FROM pg_publication WHERE pubname = {quote_literal(name)}"
        )
        tables_sql = ", ".join(quote_table(t) for t in self.tables)
        create_sql = f"CREATE PUBLICATION {name} " + (f"FOR TABLE {tables_sql}" if self.tables else "FOR ALL TABLES")
        if not found.rows:
            if not self.spec.create:
                raise CdcError(f"publication {name!r} does not exist: run `{create_sql};` or set `create: true`")
            await connection.execute(create_sql)
            log.info("publication created input=%s publication=%s", self.name, name)
            return
        if found.rows[0][0] == "t" or not self.tables:
            return
        listed = await connection.execute(
            f"SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = {quote_literal(name)}"
        )
        present = {row[0] for row in listed.rows}
        missing = [t for t in self.tables if t not in present]
        if missing:
            add_sql = f"ALTER PUBLICATION {name} ADD TABLE " + ", ".join(quote_table(t) for t in missing)
            if not self.spec.create:
                raise CdcError(
                    f"publication {name!r} lacks {', '.join(missing)}: run `{add_sql};` or set `create: true`"
                )
            await connection.execute(add_sql)
            log.info("publication extended input=%s publication=%s tables=%s", self.name, name, ",".join(missing))

    async def _slot(self, connection: PgConnection) -> tuple[int, str] | None:
        """``(confirmed_flush_lsn, plugin)`` of the slot, or None when it does not exist."""
        result = await connection.execute(
            "SELECT confirmed_flush_lsn, plugin, slot_type, database, active_pid FROM pg_replication_slots "
            f"WHERE slot_name = {quote_literal(self.spec.slot)}"
        )
        if not result.rows:
            return None
        confirmed, plugin, slot_type, database, active_pid = result.rows[0]
        if slot_type != "logical" or plugin != "pgoutput":
            raise CdcError(f"slot {self.spec.slot!r} is a {slot_type} slot with plugin {plugin!r}, not pgoutput")
        if database != connection.params.database:
            raise CdcError(
                f"slot {self.spec.slot!r} belongs to database {database!r}, not {connection.params.database!r}"
            )
        if active_pid is not None:
            raise CdcError(f"slot {self.spec.slot!r} is in use by the server process {active_pid}; one reader per slot")
        return parse_lsn(confirmed or "0/0"), plugin or ""

    # --- run ---------------------------------------------------------------------------------------------

    async def run(self, submit: Submit, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        spec = self.spec
        connection = await self._connect()
        try:
            system = (await connection.execute("IDENTIFY_SYSTEM")).first()
            identity = f"{system[0]}/{connection.params.database}/{spec.slot}"
            self._ids = _Ids(identity)
            await self._ensure_publication(connection)
            slot = await self._slot(connection)
            if slot is None:
                if not spec.create:
                    raise CdcError(
                        f"replication slot {spec.slot!r} does not exist: run "
                        f"`SELECT pg_create_logical_replication_slot('{spec.slot}', 'pgoutput');` "
                        "or set `create: true`"
                    )
                if spec.snapshot == "initial":
                    # Started before the snapshot, which submits: what commits from here on is in the
                    # snapshot or in the stream after it.
                    task_status.started()
                    await self._snapshot(connection, submit)
                else:
                    # Started once the slot exists: every change committed after start-up is streamed.
                    await connection.execute(f"CREATE_REPLICATION_SLOT {spec.slot} LOGICAL pgoutput NOEXPORT_SNAPSHOT")
                    log.info("replication slot created input=%s slot=%s", self.name, spec.slot)
                    task_status.started()
                if self.context.stopping.is_set():
                    return
                slot = await self._slot(connection)
                assert slot is not None
            else:
                task_status.started()
            start, _plugin = slot
            backoff = 0.5
            while True:
                try:
                    await self._stream(connection, submit, start)
                    return
                except (PgConnectionError, PgError, BaseExceptionGroup) as exc:
                    lost = _connection_lost(exc)
                    if lost is None or self._stopped:
                        raise
                # Lost the server (restart, failover, a terminated walsender, the network): what was read
                # is with the sinks and settles without it. Once it has, stream again from there; the
                # server skips what committed before, so nothing is delivered twice.
                checkpoint = self.checkpoint
                assert checkpoint is not None
                await checkpoint.wait_settled()
                start = checkpoint.highest or start
                with anyio.CancelScope(shield=True):
                    await connection.aclose()
                while True:
                    log.warning(
                        "replication connection lost input=%s error=%s; reconnecting in %.1fs from=%s",
                        self.name, lost, backoff, format_lsn(start),
                    )  # fmt: skip
                    with anyio.move_on_after(backoff):
                        await self.context.stopping.wait()
                    if self.context.stopping.is_set():
                        return
                    backoff = min(backoff * 2, 30.0)
                    try:
                        connection = await self._connect()
                        break
                    except PgConnectionError as exc:
                        lost = exc
                backoff = 0.5
        finally:
            with anyio.CancelScope(shield=True):
                await connection.aclose()

    async def _stream(self, connection: PgConnection, submit: Submit, start: int) -> None:
        spec = self.spec
        checkpoint = self.checkpoint = Checkpointer[int](spec.max_in_flight, committed=start)
        self.confirmed = start
        streaming = spec.streaming and connection.server_version >= 140000
        options = "proto_version '2', streaming 'on'" if streaming else "proto_version '1'"
        command = (
            f"START_REPLICATION SLOT {spec.slot} LOGICAL {format_lsn(start)} "
            f"({options}, publication_names {quote_literal(spec.publication)})"
        )
        spool = StreamSpool() if streaming else None
        try:
            await connection.start_replication(command)
        except PgError as exc:
            raise CdcError(f"cannot stream slot {spec.slot!r}: {exc}") from exc
        log.info("replication started input=%s slot=%s from=%s", self.name, spec.slot, format_lsn(start))
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._feedback, connection, checkpoint)
            tg.start_soon(self._stop_reading)
            try:
                await self._read(connection, submit, checkpoint, spool)
                await checkpoint.wait_settled()
            finally:
                tg.cancel_scope.cancel()
                if spool is not None:
                    spool.close()
        # Everything read is settled: confirm it before leaving, so a restart redelivers nothing.
        position = checkpoint.highest
        if position is not None and position != self.confirmed:
            with anyio.move_on_after(2, shield=True):
                await connection.send_status(position)
                self.confirmed = position
        log.info(
            "input finished input=%s changes=%d confirmed=%s",
            self.name,
            self.changes,
            format_lsn(self.confirmed or 0),
        )

    async def _stop_reading(self) -> None:
        await self.context.stopping.wait()
        self._stopped = True
        if self._receive_scope is not None:
            self._receive_scope.cancel()

    async def _feedback(self, connection: PgConnection, checkpoint: Checkpointer[int]) -> None:
        """Confirm settled positions every ``status_interval``, and at least every 10 s (keeps the
        connection under the server's ``wal_sender_timeout`` even while reading pauses)."""
        last_sent = time.monotonic()
        while True:
            await anyio.sleep(self.spec.status_interval)
            position = checkpoint.take()
            if position is None and time.monotonic() - last_sent < 10:
                continue
            if position is None:
                position = self.confirmed or 0
            await connection.send_status(position)
            self.confirmed = position
            last_sent = time.monotonic()

    async def _read(
        self, connection: PgConnection, submit: Submit, checkpoint: Checkpointer[int], spool: StreamSpool | None
    ) -> None:
        spec = self.spec
        decoder = Decoder(spec.numeric)
        decode = decoder.decode
        insert = decoder.insert
        ids = self._ids
        chunk_size = spec.chunk_size
        name = self.name
        schema_of = self._schema_of
        unpack_start = _WAL_START.unpack_from
        # Where the last transaction (or keepalive) ended: non-final units of a transaction carry it, so
        # that settling them never moves the slot into a transaction that is not settled as a whole.
        committed: int = checkpoint.highest or 0
        unit: list[Envelope] = []
        in_transaction = False
        index = 0
        source = Source(input=name)
        commit_time = ""
        event_time: datetime | None = None
        xid = 0
        commit_lsn = ""
        origin: str | None = None
        now = utc_now()
        ids_prefix = ""

        def add(relation: Relation, op: str, after: Any, before: Any, unchanged: list[str] | None, lsn: int) -> None:
            nonlocal index
            table = relation.table
            change: dict[str, Any] = {
                "table": table,
                "op": op,
                "after": after,
                "before": before,
                "key": relation.key,
                "lsn": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",
                "commit_lsn": commit_lsn,
                "commit_time": commit_time,
                "xid": xid,
            }
            if unchanged is not None:
                change["unchanged"] = unchanged
            if origin is not None:
                change["origin"] = origin
            uri, vendor, schema_name, schema_format, version = schema_of(table)
            unit.append(
                Envelope(
                    id=ids.id(index),
                    collector_tstamp=now,
                    source=source,
                    protocol="postgres_cdc",
                    payload=change,
                    schema=uri,
                    schema_vendor=vendor,
                    schema_name=schema_name,
                    schema_format=schema_format,
                    schema_version=version,
                    event_tstamp=event_time,
                )
            )
            index += 1

        while not self._stopped:
            with anyio.CancelScope() as scope:
                self._receive_scope = scope
                payloads = await connection.read_copy_data()
            self._receive_scope = None
            if scope.cancelled_caught or self._stopped:
                break
            if not payloads:
                raise PgConnectionError("the server ended the replication stream")
            now = utc_now()
            # Streamed transactions wait in the spool until they commit, then come back as ordinary ones.
            for payload in payloads if spool is None else spool.feed(payloads):
                kind = payload[0]
                if kind == 119:  # "w": XLogData
                    if payload[25] == 73:  # Insert, the common case: inline, no message object
                        relation, after, unchanged = insert(payload, 26)
                        if unchanged is not None or origin is not None:
                            add(relation, "insert", after, None, unchanged, unpack_start(payload, 1)[0])
                        else:
                            lsn = unpack_start(payload, 1)[0]
                            table = relation.table
                            uri, vendor, schema_name, schema_format, version = schema_of(table)
                            unit.append(
                                Envelope(
                                    id=f"{ids_prefix}{index:012x}",
                                    collector_tstamp=now,
                                    source=source,
                                    protocol="postgres_cdc",
                                    payload={
                                        "table": table,
                                        "op": "insert",
                                        "after": after,
                                        "before": None,
                                        "key": relation.key,
                                        "lsn": f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}",
                                        "commit_lsn": commit_lsn,
                                        "commit_time": commit_time,
                                        "xid": xid,
                                    },
                                    schema=uri,
                                    schema_vendor=vendor,
                                    schema_name=schema_name,
                                    schema_format=schema_format,
                                    schema_version=version,
                                    event_tstamp=event_time,
                                )
                            )
                            index += 1
                    else:
                        message = decode(payload, 25)
                        cls = type(message)
                        if cls is Change:
                            assert isinstance(message, Change)
                            add(
                                message.relation,
                                message.op,
                                message.after,
                                message.before,
                                message.unchanged,
                                unpack_start(payload, 1)[0],
                            )
                        elif cls is Begin:
                            assert isinstance(message, Begin)
                            in_transaction = True
                            index = 0
                            origin = None
                            xid = message.xid
                            commit_lsn = format_lsn(message.final_lsn)
                            event_time = _commit_time(message.commit_time)
                            commit_time = event_time.isoformat().replace("+00:00", "Z")
                            ids.start(commit_lsn)
                            ids_prefix = ids.prefix
                            source = Source(
                                input=name, metadata={"slot": spec.slot, "commit_lsn": commit_lsn, "xid": xid}
                            )
                        elif cls is Commit:
                            assert isinstance(message, Commit)
                            in_transaction = False
                            committed = message.end_lsn
                            ticket = await checkpoint.track(committed)
                            if unit:
                                self.changes += len(unit)
                                await submit(unit, ticket)
                                unit = []
                            else:
                                ticket.resolve()
                            continue
                        elif cls is Truncate:
                            assert isinstance(message, Truncate)
                            lsn = unpack_start(payload, 1)[0]
                            for relation in message.relations:
                                add(relation, "truncate", None, None, None, lsn)
                        elif cls is Origin:
                            assert isinstance(message, Origin)
                            origin = message.name
                        # Relation and Type messages only fill the decoder's cache; logical messages are
                        # not events.
                    if len(unit) >= chunk_size:
                        # A slice of a transaction: its position is where the previous one ended.
                        self.changes += len(unit)
                        ticket = await checkpoint.track(committed)
                        await submit(unit, ticket)
                        unit = []
                elif kind == 107:  # "k": primary keepalive
                    wal_end, reply = parse_keepalive(payload)
                    if not in_transaction and wal_end > committed:
                        # Every transaction before wal_end has been read (the server sends in commit
                        # order, and this keepalive came after them): once the units before it are
                        # settled, the slot may confirm it, so WAL that holds nothing for this
                        # publication (writes to other tables) is not kept for us.
                        try:
                            ticket = checkpoint.track_nowait(wal_end)
                        except anyio.WouldBlock:
                            pass
                        else:
                            committed = wal_end
                            ticket.resolve()
                    if reply:
                        position = checkpoint.highest
                        if position is not None:
                            checkpoint.take()
                            await connection.send_status(position)
                            self.confirmed = position

    def _schema_of(self, table: str) -> tuple[str, str | None, str | None, str | None, str | None]:
        """The schema URI of ``table``'s change events, and its parts (cached)."""
        found = self._table_schema.get(table)
        if found is None:
            uri = self._schemas.get(table, self.spec.schema)
            found = self._table_schema[table] = (uri, *schema_parts(uri))
        return found

    # --- the initial snapshot ----------------------------------------------------------------------------

    async def _snapshot(self, connection: PgConnection, submit: Submit) -> None:
        """Create the slot and read every published row in the snapshot it starts from.

        The rows are read on the replication connection itself, inside the transaction that creates a
        *temporary* slot with ``USE_SNAPSHOT``. Only once every row is settled by the required sinks is
        the slot copied to the permanent one (``pg_copy_logical_replication_slot``), which the stream
        then reads from. A crash before that leaves no slot (a temporary slot dies with its
        connection), so the next run does the snapshot again: a snapshot is complete or redone, never
        half done.
        """
        spec = self.spec
        temporary = f"{spec.slot[:50]}_snapshot"
        await connection.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        created = await connection.execute(
            f"CREATE_REPLICATION_SLOT {temporary} TEMPORARY LOGICAL pgoutput USE_SNAPSHOT"
        )
        consistent_point = str(created.first()[1])
        tables = await connection.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename), schemaname || '.' || tablename "
            f"FROM pg_publication_tables WHERE pubname = {quote_literal(spec.publication)} ORDER BY 2"
        )
        log.info(
            "snapshot started input=%s slot=%s at=%s tables=%d",
            self.name,
            spec.slot,
            consistent_point,
            len(tables.rows),
        )
        checkpoint = Checkpointer[int](spec.max_in_flight, committed=0)
        self._ids.start(f"snapshot/{consistent_point}")
        source = Source(input=self.name, metadata={"slot": spec.slot, "snapshot_lsn": consistent_point})
        index = 0
        for quoted, table in tables.rows:
            assert quoted is not None and table is not None
            uri, vendor, schema_name, schema_format, version = self._schema_of(table)
            await connection.execute(f"DECLARE streamer_snapshot NO SCROLL CURSOR FOR SELECT * FROM {quoted}")
            key = await self._primary_key(connection, quoted)
            while not self.context.stopping.is_set():
                result = await connection.execute(f"FETCH {spec.chunk_size} FROM streamer_snapshot")
                if not result.rows:
                    break
                converters = [converter_for(t, spec.numeric) for t in result.types]
                columns = result.columns
                now = utc_now()
                unit = []
                for row in result.rows:
                    after = {
                        column: (None if value is None else convert(value))
                        for column, value, convert in zip(columns, row, converters, strict=True)
                    }
                    change = {
                        "table": table,
                        "op": "read",
                        "after": after,
                        "before": None,
                        "key": key,
                        "lsn": consistent_point,
                        "commit_lsn": None,
                        "commit_time": None,
                        "xid": None,
                    }
                    unit.append(
                        Envelope(
                            id=self._ids.id(index),
                            collector_tstamp=now,
                            source=source,
                            protocol="postgres_cdc",
                            payload=change,
                            schema=uri,
                            schema_vendor=vendor,
                            schema_name=schema_name,
                            schema_format=schema_format,
                            schema_version=version,
                        )
                    )
                    index += 1
                self.snapshot_rows += len(unit)
                ticket = await checkpoint.track(index)
                await submit(unit, ticket)
            await connection.execute("CLOSE streamer_snapshot")
        await checkpoint.wait_settled()
        if self.context.stopping.is_set():
            log.info("snapshot interrupted input=%s rows=%d; it is redone on the next run", self.name, index)
            return
        await connection.execute("COMMIT")
        await connection.execute(
            f"SELECT pg_copy_logical_replication_slot({quote_literal(temporary)}, {quote_literal(spec.slot)}, false)"
        )
        await connection.execute(f"DROP_REPLICATION_SLOT {temporary}")
        log.info("snapshot finished input=%s slot=%s rows=%d", self.name, spec.slot, index)

    async def _primary_key(self, connection: PgConnection, quoted: str) -> list[str]:
        result = await connection.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = {quote_literal(quoted)}::regclass AND i.indisprimary "
            "ORDER BY array_position(i.indkey::int2[], a.attnum)"
        )
        return [str(row[0]) for row in result.rows]
