"""Follow a MongoDB change stream: each change becomes one event; the resume token is saved only once the
sinks hold the changes before it.

The input watches one collection, one database or the whole deployment with pymongo's asyncio client
(``AsyncMongoClient.watch``, pymongo >= 4.10). What a getMore returns is split into units of up to
``batch_size`` changes; each unit's position is the resume token of its last change, tracked in one
ordered checkpoint, and a saver writes the highest acknowledged token to the ``token_store`` every
``checkpoint_interval`` seconds and when the input stops. On start the stream resumes after the saved
token (``startAfter``), else from ``start_at_operation_time``, else from now. An event's id is a
UUIDv5 of its resume token, so a change read again after a crash has the same id.

With ``snapshot: initial`` and no saved token, the collection is read first (operation ``read``), from a
stream position taken before the first document is read, so no change is missed between the two.

Example::

    inputs:
      orders:
        type: mongo_change_stream
        uri: ${MONGO_URI:-mongodb://127.0.0.1:27017/?replicaSet=rs0}
        database: app
        collection: orders
        full_document: updateLookup
        pipeline:
          - {$match: {operationType: {$in: [insert, update, replace, delete]}}}
        token_store:
          type: file
          path: state/orders.resume.json
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from streamer.core.checkpoint import Checkpointer
from streamer.core.components import ASYNCIO_ONLY, Context, Input, InputSpec, Submit
from streamer.core.config import PathT
from streamer.core.envelope import Envelope, Source, set_schema, utc_now
from streamer.mongo.bson_json import JsonMode, to_json
from streamer.mongo.errors import ChangeStreamError, ResumeTokenLost, is_history_lost, is_pymongo_error, is_transient
from streamer.mongo.events import change_event_id, change_payload, read_event_id, read_payload, token_text
from streamer.mongo.schema import MONGO_CHANGE_SCHEMA
from streamer.mongo.settings import (
    ConnectTimeout,
    MongoConnection,
    MongoUri,
    ServerSelectionTimeout,
    check_connection,
    create_client,
    describe,
)
from streamer.mongo.tokens import (
    ResumeState,
    TokenStore,
    TokenStoreError,
    TokenStoreSpec,
    open_token_store,
)

__all__ = ["MongoChangeStreamInput", "MongoChangeStreamSpec"]

log = logging.getLogger("streamer")


class MongoChangeStreamSpec(InputSpec, tag="mongo_change_stream", kw_only=True):
    """Follow a MongoDB change stream (a collection, a database or the whole deployment) with resume tokens
    saved only after the sinks hold the changes."""

    uri: MongoUri
    connect_timeout: ConnectTimeout = 10.0
    server_selection_timeout: ServerSelectionTimeout = 30.0
    database: Annotated[
        str | None,
        msgspec.Meta(description="The database to watch; none: every database of the deployment.", examples=["app"]),
    ] = None
    collection: Annotated[
        str | None,
        msgspec.Meta(
            description="The collection of `database` to watch; none: every collection of the database.",
            examples=["orders"],
        ),
    ] = None
    pipeline: Annotated[
        list[dict[str, Any]],
        msgspec.Meta(
            description="Aggregation stages applied to the change stream on the server (`$match`, `$project`, "
            "...), e.g. to keep only some operation types. Keep `_id` (the resume token) in every change.",
            examples=[[{"$match": {"operationType": {"$in": ["insert", "update", "replace", "delete"]}}}]],
        ),
    ] = msgspec.field(default_factory=list)
    full_document: Annotated[
        Literal["default", "updateLookup", "whenAvailable", "required"],
        msgspec.Meta(
            description="`fullDocument` of update changes: `default` (none; inserts and replaces carry theirs), "
            "`updateLookup` (the document's current state, read when the change is), `whenAvailable` / "
            "`required` (the post-image, MongoDB 6.0+ with `changeStreamPreAndPostImages` on the collection)."
        ),
    ] = "default"
    full_document_before_change: Annotated[
        Literal["off", "whenAvailable", "required"],
        msgspec.Meta(
            description="Pre-images (`fullDocumentBeforeChange`) of update, replace and delete changes "
            "(MongoDB 6.0+, `changeStreamPreAndPostImages` on the collection); `required` fails the stream "
            "when one is missing."
        ),
    ] = "off"
    start_at_operation_time: Annotated[
        datetime | None,
        msgspec.Meta(
            description="Where to start when no token is saved: the changes from this time (ISO 8601, in "
            "quotes; UTC when it names no offset; to the second) on, if the oplog still holds it; default: "
            "from now. A saved token always wins.",
            examples=["2026-12-04T00:00:00Z"],
        ),
    ] = None
    snapshot: Annotated[
        Literal["never", "initial"],
        msgspec.Meta(
            description="`initial`: when no token is saved, read the whole collection first (each document "
            "an event with operation `read`), then follow the stream from a position taken before the read. "
            "Needs `collection`.",
        ),
    ] = "never"
    token_store: Annotated[
        TokenStoreSpec,
        msgspec.Meta(
            description="Where the resume token is saved: `{type: file, path: ...}` or `{type: postgres, dsn: "
            "..., table: ...}`; it is written only once the required sinks hold every change before it.",
            examples=[{"type": "file", "path": "state/orders.resume.json"}],
        ),
    ]
    batch_size: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Most changes per unit (and per getMore): the changes a getMore returns together "
            "are submitted together, up to this many.",
        ),
    ] = 256
    snapshot_batch_size: Annotated[
        int, msgspec.Meta(ge=1, description="Documents per unit (and per find batch) of the initial snapshot.")
    ] = 1000
    max_await: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds a getMore waits on the server for new changes (`maxAwaitTimeMS`); on a quiet "
            "or filtered stream the saved token still advances this often (the server's "
            "`postBatchResumeToken`).",
        ),
    ] = 1.0
    max_in_flight: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Units that may await acknowledgement at once; reading pauses beyond that. It bounds "
            "what a crash redelivers.",
        ),
    ] = 64
    checkpoint_interval: Annotated[
        float,
        msgspec.Meta(gt=0, description="Seconds between saves of the highest acknowledged resume token."),
    ] = 1.0
    json_mode: Annotated[
        JsonMode,
        msgspec.Meta(
            description="How BSON values become JSON: Extended JSON v2 `relaxed` (numbers as numbers, dates as "
            "ISO 8601) or `canonical` (every number typed)."
        ),
    ] = "relaxed"
    retry_backoff: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds before reconnecting after a lost connection; doubles each time, up to "
            "`retry_max_backoff`.",
        ),
    ] = 0.5
    retry_max_backoff: Annotated[
        float, msgspec.Meta(gt=0, description="Longest wait between two reconnection attempts, in seconds.")
    ] = 30.0

    def check(self) -> list[tuple[PathT, str]]:
        problems = check_connection(MongoConnection(uri=self.uri))
        problems.extend(self.token_store.check(("token_store",)))
        if self.collection is not None and self.database is None:
            problems.append((("collection",), "`collection` needs `database`"))
        if self.snapshot == "initial" and self.collection is None:
            problems.append((("snapshot",), "`snapshot: initial` needs `database` and `collection`"))
        return problems


@dataclass(slots=True)
class _Idle:
    """A getMore returned nothing new: the stream's ``postBatchResumeToken`` moved to ``token``."""

    token: dict[str, Any]


class MongoChangeStreamInput(Input):
    Spec = MongoChangeStreamSpec
    spec: MongoChangeStreamSpec
    backends = ASYNCIO_ONLY
    backend_reason = "uses pymongo's asyncio client"
    requires = ("pymongo",)
    extra = "mongo"

    def __init__(self, name: str, spec: MongoChangeStreamSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        self.connection = MongoConnection(
            uri=spec.uri,
            connect_timeout=spec.connect_timeout,
            server_selection_timeout=spec.server_selection_timeout,
        )
        self.store: TokenStore = open_token_store(spec.token_store, f"{context.pipeline}/{name}", context.base_dir)
        self.checkpoint: Checkpointer[ResumeState] | None = None
        self.saved: ResumeState | None = None
        """The state last written to the store (loaded, at first)."""
        self.changes = 0
        self.snapshot_documents = 0
        self._unsaved: ResumeState | None = None
        self._source = Source(input=name)
        self._where = ".".join(filter(None, [spec.database, spec.collection])) or "(deployment)"

    # --- run ----------------------------------------------------------------------------------------

    async def run(self, submit: Submit, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        store = self.store
        try:
            # A token that cannot be read stops the start here, before anything is read from the stream.
            state = self.saved = await store.load()
            client = create_client(self.connection)
            try:
                task_status.started()
                await self._run(client, submit, state)
            finally:
                with anyio.CancelScope(shield=True):
                    await client.close()
        finally:
            with anyio.CancelScope(shield=True):
                await store.aclose()

    async def _run(self, client: Any, submit: Submit, state: ResumeState | None) -> None:
        spec = self.spec
        checkpoint = self.checkpoint = Checkpointer[ResumeState](spec.max_in_flight, committed=state)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._save_periodically)
                if spec.snapshot == "initial" and (state is None or state.snapshot == "in_progress"):
                    state = await self._snapshot(client, submit, state)
                if state is None or state.snapshot != "in_progress":
                    invalidated = await self._follow(client, submit, state)
                    await checkpoint.wait_settled()
                    if invalidated is not None:
                        log.warning(
                            "change stream invalidated input=%s namespace=%s operation=%s: the collection or "
                            "database was dropped or renamed; the input stops (no retry). Its token is saved: a "
                            "restart starts after the invalidate, on a collection created again under that name",
                            self.name, self._where, invalidated,
                        )
                else:
                    await checkpoint.wait_settled()
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                try:
                    await self._save()
                except TokenStoreError as exc:
                    log.error("%s input=%s", exc, self.name)
            log.info(
                "input finished input=%s namespace=%s changes=%d snapshot_documents=%d saved=%s",
                self.name, self._where, self.changes, self.snapshot_documents,
                token_text(self.saved.token) if self.saved else None,
            )

    # --- saving the token ------------------------------------------------------------------------------

    async def _save(self) -> None:
        """Write the checkpoint's position if it moved (or the last one a failed save left)."""
        assert self.checkpoint is not None
        position = self.checkpoint.take()
        if position is not None:
            self._unsaved = position
        state = self._unsaved
        if state is None:
            return
        if state != self.saved:
            await self.store.save(state)
        self.saved = state
        self._unsaved = None

    async def _save_periodically(self) -> None:
        assert self.checkpoint is not None
        while True:
            await anyio.sleep(self.spec.checkpoint_interval)
            try:
                await self._save()
            except TokenStoreError as exc:
                # The position is kept and saved at the next tick; meanwhile a crash redelivers more.
                log.warning("%s; retrying in %ss input=%s", exc, self.spec.checkpoint_interval, self.name)
            if (failure := self.checkpoint.failure) is not None:
                # A required sink gave up on a unit: the token stays before it, and the run stops with the
                # sink's error now rather than at the next change (a quiet stream may have none for long).
                raise failure

    # --- the initial snapshot ----------------------------------------------------------------------------

    async def _snapshot(self, client: Any, submit: Submit, state: ResumeState | None) -> ResumeState | None:
        """Read the collection as ``read`` events; return the state the stream then starts from (``None``
        when a stop interrupted it: it is read again from the start next time)."""
        spec = self.spec
        assert self.checkpoint is not None and spec.database is not None and spec.collection is not None
        collection = client[spec.database][spec.collection]
        if state is None:
            # The stream position before the first document is read: every change after it is followed
            # afterwards, so nothing falls between the snapshot and the stream.
            try:
                async with await collection.watch(
                    spec.pipeline, max_await_time_ms=1, **self._start_options(None)
                ) as stream:
                    token = stream.resume_token
            except Exception as exc:
                raise self._stream_error(exc, None) from None
            if token is None:
                raise ChangeStreamError(
                    f"the server returned no resume token when opening the change stream on {self._where}; "
                    "`snapshot: initial` needs one (MongoDB 4.0.7 or later)"
                )
            state = ResumeState(token=dict(token), snapshot="in_progress")
            # Saved before any document: a restart reads the snapshot again and the stream from here.
            await self.store.save(state)
            self.saved = state
        log.info(
            "snapshot started input=%s namespace=%s stream_from=%s", self.name, self._where, token_text(state.token)
        )
        checkpoint = self.checkpoint
        snapshot_token = to_json(state.token, spec.json_mode)
        namespace = {"db": spec.database, "coll": spec.collection}
        cursor = collection.find({}, batch_size=spec.snapshot_batch_size)
        try:
            while not self.context.stopping.is_set():
                documents = await cursor.to_list(spec.snapshot_batch_size)
                if not documents:
                    break
                now = utc_now()
                envelopes = [self._read_event(d, now, namespace, state.token, snapshot_token) for d in documents]
                self.snapshot_documents += len(envelopes)
                ticket = await checkpoint.track(state)
                await submit(envelopes, ticket)
        except (TokenStoreError, ChangeStreamError):
            raise
        except Exception as exc:
            if is_pymongo_error(exc):
                raise ChangeStreamError(
                    f"the snapshot of {self._where} failed: {describe(exc, spec.uri)}; it is read again from the "
                    "start on the next run"
                ) from None
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await cursor.close()
        if self.context.stopping.is_set():
            log.info(
                "snapshot interrupted by a stop input=%s documents=%d: it is read again on the next run",
                self.name, self.snapshot_documents,
            )
            return state
        done = ResumeState(token=state.token, snapshot="done")
        # Passes the checkpoint once every snapshot unit before it is written.
        (await checkpoint.track(done)).resolve()
        log.info("snapshot read input=%s documents=%d", self.name, self.snapshot_documents)
        return done

    def _read_event(
        self, document: dict[str, Any], now: datetime, namespace: dict[str, Any], token: Any, token_json: Any
    ) -> Envelope:
        envelope = Envelope(
            id=read_event_id(token, document.get("_id")),
            collector_tstamp=now,
            source=self._source,
            protocol="mongo_change_stream",
            payload=read_payload(document, namespace, token_json, self.spec.json_mode),
        )
        set_schema(envelope, MONGO_CHANGE_SCHEMA)
        return envelope

    # --- following the stream ---------------------------------------------------------------------------

    def _start_options(self, state: ResumeState | None) -> dict[str, Any]:
        if state is not None:
            return {"start_after": state.token}
        if self.spec.start_at_operation_time is not None:
            from bson import Timestamp

            moment = self.spec.start_at_operation_time
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return {"start_at_operation_time": Timestamp(int(moment.timestamp()), 0)}
        return {}

    def _target(self, client: Any) -> Any:
        spec = self.spec
        if spec.database is None:
            return client
        if spec.collection is None:
            return client[spec.database]
        return client[spec.database][spec.collection]

    async def _follow(self, client: Any, submit: Submit, state: ResumeState | None) -> str | None:
        """Read the stream until a stop (or an invalidate, whose namespace it returns)."""
        send, receive = anyio.create_memory_object_stream[Any](self.spec.batch_size)
        invalidated: list[str] = []
        async with anyio.create_task_group() as tg:
            reader = anyio.CancelScope()

            async def read() -> None:
                with reader:
                    await self._read(client, state, send, invalidated)

            async def stop_reading() -> None:
                await self.context.stopping.wait()
                reader.cancel()

            tg.start_soon(read)
            tg.start_soon(stop_reading)
            await self._consume(receive, submit, state.snapshot if state is not None else None)
            tg.cancel_scope.cancel()
        return invalidated[0] if invalidated else None

    async def _read(
        self, client: Any, state: ResumeState | None, send: MemoryObjectSendStream[Any], invalidated: list[str]
    ) -> None:
        """Open the stream and pass each change (and each idle token) on; reconnect after transient errors."""
        spec = self.spec
        target = self._target(client)
        options = self._start_options(state)
        resume_from: dict[str, Any] | None = state.token if state is not None else None
        backoff = spec.retry_backoff
        async with send:
            while True:
                try:
                    async with await target.watch(
                        spec.pipeline,
                        full_document=None if spec.full_document == "default" else spec.full_document,
                        full_document_before_change=(
                            None if spec.full_document_before_change == "off" else spec.full_document_before_change
                        ),
                        batch_size=spec.batch_size,
                        max_await_time_ms=int(spec.max_await * 1000),
                        **options,
                    ) as stream:
                        log.info(
                            "change stream opened input=%s namespace=%s from=%s",
                            self.name, self._where,
                            token_text(resume_from) if resume_from else _describe_options(options),
                        )
                        backoff = spec.retry_backoff
                        while True:
                            change = await stream.try_next()
                            if change is None:
                                token = stream.resume_token
                                if token is not None and token != resume_from:
                                    resume_from = token
                                    options = {"start_after": token}
                                    await _send(send, _Idle(token))
                                continue
                            resume_from = change["_id"]
                            options = {"start_after": resume_from}
                            await _send(send, change)
                            if change.get("operationType") == "invalidate":
                                invalidated.append(_namespace_text(change.get("ns")) or self._where)
                                return
                except Exception as exc:
                    if not is_pymongo_error(exc):
                        raise
                    if not is_transient(exc):
                        raise self._stream_error(exc, resume_from) from None
                    log.warning(
                        "change stream interrupted input=%s error=%s; reconnecting in %.1fs from=%s",
                        self.name, describe(exc, spec.uri), backoff,
                        token_text(resume_from) if resume_from else _describe_options(options),
                    )
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, spec.retry_max_backoff)

    def _stream_error(self, exc: BaseException, token: Mapping[str, Any] | None) -> ChangeStreamError:
        text = describe(exc, self.spec.uri)
        if is_history_lost(exc):
            origin = (
                f"the token {token_text(token)} (the last one read; the last saved is in {self.store.where})"
                if token is not None
                else f"start_at_operation_time {self.spec.start_at_operation_time}"
            )
            return ResumeTokenLost(
                f"the change stream on {self._where} cannot resume from {origin}: the server no longer has "
                f"that point of its oplog ({text}). The changes made since then cannot be read from the stream. "
                f"Choose: restart from now (delete the saved token in {self.store.where}; the changes in the gap "
                "are lost), or re-snapshot (delete it and set `snapshot: initial` to read the collection again). "
                "To keep it from happening again, keep more oplog (oplogMinRetentionHours) or stop for less long"
            )
        return ChangeStreamError(f"the change stream on {self._where} failed: {text}")

    async def _consume(self, receive: MemoryObjectReceiveStream[Any], submit: Submit, snapshot: Any) -> None:
        """Group what the reader passes into units, track them in order, submit them."""
        checkpoint = self.checkpoint
        assert checkpoint is not None
        batch_size = self.spec.batch_size
        stopping = self.context.stopping
        async with receive:
            while not stopping.is_set():
                try:
                    item = await receive.receive()
                except anyio.EndOfStream:
                    return
                changes: list[dict[str, Any]] = []
                idle: _Idle | None = None
                while True:
                    if isinstance(item, _Idle):
                        idle = item  # ends the unit: its token is after every change before it
                        break
                    changes.append(item)
                    if len(changes) >= batch_size:
                        break
                    try:
                        item = receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                if changes:
                    now = utc_now()
                    envelopes = [self._change_event(change, now) for change in changes]
                    self.changes += len(envelopes)
                    ticket = await checkpoint.track(ResumeState(token=changes[-1]["_id"], snapshot=snapshot))
                    await submit(envelopes, ticket)
                if idle is not None:
                    # No event: the position passes once every unit before it is written.
                    (await checkpoint.track(ResumeState(token=idle.token, snapshot=snapshot))).resolve()

    def _change_event(self, change: dict[str, Any], now: datetime) -> Envelope:
        payload, event_time = change_payload(change, self.spec.json_mode)
        envelope = Envelope(
            id=change_event_id(change["_id"]),
            collector_tstamp=now,
            source=self._source,
            protocol="mongo_change_stream",
            payload=payload,
            event_tstamp=event_time,
        )
        set_schema(envelope, MONGO_CHANGE_SCHEMA)
        return envelope


async def _send(send: MemoryObjectSendStream[Any], item: Any) -> None:
    """``send.send(item)``, yielding only when the stream is full: ``send`` always yields, which would
    wake the consumer once per change; this way it takes what a whole getMore returned at once."""
    try:
        send.send_nowait(item)
    except anyio.WouldBlock:
        await send.send(item)


def _namespace_text(ns: Any) -> str | None:
    if not isinstance(ns, Mapping):
        return None
    return ".".join(str(part) for part in (ns.get("db"), ns.get("coll")) if part)


def _describe_options(options: Mapping[str, Any]) -> str:
    if "start_at_operation_time" in options:
        moment = options["start_at_operation_time"]
        return f"operation time {datetime.fromtimestamp(moment.time, UTC).isoformat()}"
    return "now"
