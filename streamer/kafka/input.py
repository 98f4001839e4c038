"""Consume Kafka topics in a consumer group; offsets are committed only once the sinks hold the records.

A fetch returns, per partition, the records that arrived since the last one: each partition's slice is
one unit, submitted together and tracked in that partition's ordered checkpoint at the offset after its
last record. Offsets are committed (``enable_auto_commit`` is off) every ``commit_interval`` seconds,
when partitions are revoked in a rebalance, and when the input stops, and only up to the highest offset
below which every unit is written: a unit settling early never lets the commit pass one still in
flight. On a rebalance the revoked partitions' settled offsets are committed and the rest is forgotten:
the new owner reads it again. ``max_in_flight`` units per partition may await their sinks; beyond that
the input stops fetching (backpressure).

**Decoding** (``format``): ``self_describing`` (``{"schema": "iglu:...", "data": ...}``), ``json`` (any
JSON value, validated against ``schema``) or ``envelope`` (an envelope or a dead letter written by a
streamer sink, read back with its id, times and source, and validated again: one streamer feeds another
through Kafka without wrapping twice). A record that cannot be decoded becomes an invalid event, with
the error and its bytes in base64 (``payload.raw_base64``); nothing is skipped. Each event's
``source.metadata.kafka`` holds the record's topic, partition, offset, timestamp, key and headers.

**Event ids** are derived from the record's place (a UUIDv8: 60 bits of a hash of topic and partition,
60 of the offset), so a record read again after a crash or a rebalance has the same id and an
idempotent sink (``postgres`` with ``on_conflict: ignore``) stores it once. An ``envelope`` record keeps
its own id.

**A unit a required sink failed to write** (retries exhausted, no dead-letter sink took it) holds its
partition's commit below it; the partition stops fetching and the unit is submitted again after
``retry_backoff`` (doubling), up to ``max_retries`` times. Then, with ``on_failure: stop`` (the
default), the input stops the pipeline with an error naming the partition and offsets (a restart reads
them again); with ``on_failure: invalid`` its events are marked invalid (error ``delivery``) and sent
to the ``invalid`` route instead, and the partition moves on once that holds them.

Uses aiokafka, so it runs on asyncio only.

Example::

    inputs:
      events:
        type: kafka
        brokers: ${KAFKA_BROKERS:-127.0.0.1:9092}
        topics: [events]
        group: streamer
        format: self_describing
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import TaskStatus

from streamer.core.checkpoint import Checkpointer, Ticket
from streamer.core.components import ASYNCIO_ONLY, Context, Input, InputSpec, Submit
from streamer.core.config import PathT
from streamer.core.delivery import Delivery
from streamer.core.envelope import (
    DeadLetter,
    Envelope,
    ErrorDetail,
    Source,
    fill_self_describing,
    set_schema,
    utc_now,
)
from streamer.kafka.settings import (
    Brokers,
    ClientId,
    KafkaConnection,
    MetadataMaxAge,
    RequestTimeout,
    SaslOption,
    TlsOption,
    check_connection,
    client_options,
    describe,
)

__all__ = ["KafkaInput", "KafkaInputError", "KafkaInputSpec", "record_event_id"]

log = logging.getLogger("streamer")

Format = Literal["self_describing", "json", "envelope"]


class KafkaInputError(Exception):
    """The Kafka input cannot go on: the consumer failed, or a unit could not be written."""


class KafkaInputSpec(InputSpec, tag="kafka", kw_only=True):
    """Consume Kafka topics in a consumer group, committing offsets only after the sinks hold the records."""

    brokers: Brokers
    client_id: ClientId = "streamer"
    tls: TlsOption = None
    sasl: SaslOption = None
    request_timeout: RequestTimeout = 30.0
    metadata_max_age: MetadataMaxAge = 300.0

    topics: Annotated[
        list[str],
        msgspec.Meta(description="Topics to consume (or use `pattern`).", examples=[["events"]]),
    ] = msgspec.field(default_factory=list)
    pattern: Annotated[
        str | None,
        msgspec.Meta(
            description="A regular expression: every topic whose whole name matches is consumed, also topics "
            "created later (found at the next metadata refresh). Instead of `topics`.",
            examples=["events\\..*"],
        ),
    ] = None
    group: Annotated[
        str,
        msgspec.Meta(
            description="Consumer group id: processes with the same group share the topics' partitions, and "
            "the committed offsets are the group's.",
            examples=["streamer"],
        ),
    ]
    start_from: Annotated[
        Literal["earliest", "latest"],
        msgspec.Meta(
            description="Where a partition with no committed offset for the group starts: `earliest` (every "
            "record the topic still holds) or `latest` (only records produced from now on). A committed offset "
            "always wins.",
        ),
    ] = "earliest"
    format: Annotated[
        Format,
        msgspec.Meta(
            description="What a record's value holds: `self_describing` JSON (`{\"schema\": ..., \"data\": ...}`); "
            "`json`, any JSON value, validated against `schema`; `envelope`, an envelope or dead letter written "
            "by a streamer sink, read back with its id. A record that does not decode is an invalid event "
            "with its bytes in base64.",
        ),
    ] = "self_describing"
    schema: Annotated[
        str | None,
        msgspec.Meta(
            description="The schema every record is validated against, with `format: json` (an Iglu URI).",
            examples=["iglu:com.example/order/jsonschema/1-0-0"],
        ),
    ] = None
    session_timeout: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds without a heartbeat after which the broker drops a member from the group "
            "(`session.timeout.ms`) and gives its partitions to the others. Joining a group takes about half of "
            "it on some brokers: shorter means faster fail-over and start-up, longer fewer needless rebalances.",
            examples=[10],
        ),
    ] = 10.0
    heartbeat_interval: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds between heartbeats to the group coordinator (`heartbeat.interval.ms`); "
            "below a third of `session_timeout`.",
            examples=[3],
        ),
    ] = 3.0
    max_poll_interval: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds the input may go without fetching (its sinks are slow: backpressure) before "
            "it leaves the group and its partitions go to another member (`max.poll.interval.ms`).",
        ),
    ] = 300.0
    max_records: Annotated[
        int,
        msgspec.Meta(ge=1, description="Records taken per fetch at most, over all partitions."),
    ] = 5_000
    max_partition_fetch_bytes: Annotated[
        int,
        msgspec.Meta(
            ge=1024,
            description="Bytes fetched per partition per request at most (`max.partition.fetch.bytes`); a "
            "unit is at most about this large.",
        ),
    ] = 1_048_576
    max_in_flight: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Units (one partition's share of a fetch) per partition that may await their sinks; "
            "beyond that the input stops fetching. It bounds what a crash redelivers.",
        ),
    ] = 16
    commit_interval: Annotated[
        float,
        msgspec.Meta(gt=0, description="Seconds between offset commits (also committed on rebalance and stop)."),
    ] = 1.0
    max_retries: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="Times a unit a required sink failed to write is submitted again (after the sink's "
            "own retries) before `on_failure` applies.",
        ),
    ] = 3
    retry_backoff: Annotated[
        float,
        msgspec.Meta(gt=0, description="Seconds before submitting a failed unit again; doubles each time."),
    ] = 1.0
    retry_max_backoff: Annotated[
        float, msgspec.Meta(gt=0, description="Longest wait before submitting a failed unit again, in seconds.")
    ] = 30.0
    on_failure: Annotated[
        Literal["stop", "invalid"],
        msgspec.Meta(
            description="When a unit still fails after `max_retries`: `stop` the pipeline with an error (nothing "
            "past the unit is committed, so a restart reads it again), or mark its events `invalid` (error "
            "`delivery`) and send them to the invalid route, committing past them once that holds them.",
        ),
    ] = "stop"

    def connection(self) -> KafkaConnection:
        return KafkaConnection(
            brokers=self.brokers,
            client_id=self.client_id,
            tls=self.tls,
            sasl=self.sasl,
            request_timeout=self.request_timeout,
            metadata_max_age=self.metadata_max_age,
        )

    def check(self) -> list[tuple[PathT, str]]:
        problems = list(check_connection(self.connection()))
        if bool(self.topics) == (self.pattern is not None):
            problems.append((("topics",), "give either `topics` (a list of names) or `pattern` (a regex)"))
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                problems.append((("pattern",), f"not a regular expression: {exc}"))
        if self.format == "json" and self.schema is None:
            problems.append((("schema",), "`format: json` needs `schema`: the Iglu URI records are validated against"))
        if self.format != "json" and self.schema is not None:
            problems.append(
                (("schema",), f"`schema` applies to `format: json` only (records name theirs with `{self.format}`)")
            )
        if self.heartbeat_interval >= self.session_timeout:
            problems.append((("heartbeat_interval",), "must be below `session_timeout` (a third of it is usual)"))
        return problems


# --- event ids ----------------------------------------------------------------------------------------

_ID_NAMESPACE = b"streamer/kafka/"


def _id_prefix(topic: str, partition: int) -> str:
    """The first half of the ids of a partition's events: 60 bits of a hash of topic and partition, version 8."""
    digest = hashlib.sha1(_ID_NAMESPACE + f"{topic}/{partition}".encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-8{digest[13:16]}-"


def _id_suffix(offset: int) -> str:
    """The second half: the variant, then the offset's low 60 bits (offsets stay far below 2**60)."""
    digits = "%015x" % (offset & 0xFFFFFFFFFFFFFFF)
    return f"8{digits[:3]}-{digits[3:]}"


def record_event_id(topic: str, partition: int, offset: int) -> str:
    """The id of the event read from ``offset`` of ``topic``/``partition``: the same on every read.

    A UUIDv8: 60 bits of a hash of topic and partition, then 60 bits of the offset.
    """
    return _id_prefix(topic, partition) + _id_suffix(offset)


# --- decoding -------------------------------------------------------------------------------------------

_decode_json = msgspec.json.Decoder().decode
_decode_envelope = msgspec.json.Decoder(Envelope).decode
_decode_dead_letter = msgspec.json.Decoder(DeadLetter).decode


def _text(data: bytes) -> str | None:
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def record_metadata(record: Any) -> dict[str, Any]:
    """What ``source.metadata.kafka`` holds for ``record`` (an aiokafka ``ConsumerRecord``).

    The key and header values are text when they are UTF-8, else base64 under ``key_base64`` /
    ``headers_base64``; a header name repeated keeps its last value.
    """
    metadata: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp,
    }
    key = record.key
    if key is not None:
        text = _text(key)
        if text is not None:
            metadata["key"] = text
        else:
            metadata["key_base64"] = base64.b64encode(key).decode()
    headers = record.headers
    if headers:
        texts: dict[str, str] = {}
        binary: dict[str, str] = {}
        for name, value in headers:
            text = _text(value) if value is not None else ""
            if text is not None:
                texts[name] = text
            else:
                binary[name] = base64.b64encode(value).decode()
        if texts:
            metadata["headers"] = texts
        if binary:
            metadata["headers_base64"] = binary
    return metadata


def _undecodable(envelope: Envelope, value: bytes | None, message: str) -> Envelope:
    envelope.payload = None if value is None else {"raw_base64": base64.b64encode(value).decode()}
    envelope.fail(ErrorDetail(keyword="decode", message=message))
    return envelope


class _Decoder:
    """Turns one partition's records into envelopes in the configured format."""

    __slots__ = ("_format", "_input", "_schema")

    def __init__(self, input_name: str, format: Format, schema: str | None) -> None:
        self._input = input_name
        self._format = format
        self._schema = schema

    def decode(self, records: list[Any], prefix: str) -> list[Envelope]:
        now = utc_now()
        name = self._input
        out: list[Envelope] = []
        append = out.append
        if self._format == "envelope":
            for record in records:
                append(self._envelope(record, prefix, now))
            return out
        protocol = self._format
        schema = self._schema
        for record in records:
            envelope = Envelope(
                id=prefix + _id_suffix(record.offset),
                collector_tstamp=now,
                source=Source(input=name, metadata={"kafka": record_metadata(record)}),
                protocol=protocol,
            )
            value = record.value
            if value is None:
                append(_undecodable(envelope, None, "the record has no value (a tombstone)"))
                continue
            try:
                document = _decode_json(value)
            except msgspec.DecodeError as exc:
                append(_undecodable(envelope, value, f"not valid JSON: {exc}"))
                continue
            if schema is None:
                fill_self_describing(envelope, document)
            else:
                set_schema(envelope, schema)
                envelope.payload = document
            append(envelope)
        return out

    def _envelope(self, record: Any, prefix: str, now: Any) -> Envelope:
        value = record.value
        metadata = record_metadata(record)
        replayed: Envelope | None = None
        problem = ""
        if value is not None:
            try:
                replayed = _decode_envelope(value)
            except msgspec.DecodeError as exc:
                try:
                    replayed = _decode_dead_letter(value).envelope  # replayed as the envelope it wraps
                except msgspec.DecodeError:
                    problem = str(exc)
        if replayed is not None:
            replayed.valid, replayed.errors = True, None  # validated again
            source = replayed.source
            source.metadata = {**source.metadata, "kafka": metadata} if source.metadata else {"kafka": metadata}
            return replayed
        envelope = Envelope(
            id=prefix + _id_suffix(record.offset),
            collector_tstamp=now,
            source=Source(input=self._input, metadata={"kafka": metadata}),
            protocol="envelope",
        )
        if value is None:
            return _undecodable(envelope, None, "the record has no value (a tombstone)")
        try:
            document = _decode_json(value)
        except msgspec.DecodeError as exc:
            return _undecodable(envelope, value, f"not valid JSON: {exc}")
        envelope.payload = document
        envelope.fail(ErrorDetail(keyword="decode", message=f"not a streamer envelope: {problem}"))
        return envelope


# --- the input ------------------------------------------------------------------------------------------


class _Partition:
    """One assigned partition: its ordered checkpoint and where it stands."""

    __slots__ = ("checkpoint", "held", "prefix", "tp", "uncommitted")

    def __init__(self, tp: Any, max_in_flight: int) -> None:
        self.tp = tp
        self.checkpoint = Checkpointer[int](max_in_flight)
        self.prefix = _id_prefix(tp.topic, tp.partition)
        self.uncommitted: int | None = None
        """A position taken from the checkpoint whose commit failed: committed at the next attempt."""
        self.held = False
        """Fetching is paused: a unit failed and is being retried."""


class _Unit:
    """One submitted unit: what is needed to submit it again if a required sink fails it."""

    __slots__ = ("attempts", "due", "owner", "partition", "records", "ticket")

    def __init__(self, owner: KafkaInput, partition: _Partition, records: list[Any], ticket: Ticket[int]) -> None:
        self.owner = owner
        self.partition = partition
        self.records = records
        self.ticket = ticket
        self.attempts = 0
        self.due = 0.0

    def done(self, delivery: Delivery) -> None:
        # Runs in a sink worker's task (Delivery.on_done): only note it; the input's task retries.
        if delivery.failure is not None:
            self.owner._failed_unit(self)

    def describe(self) -> str:
        tp = self.partition.tp
        return f"{tp.topic}[{tp.partition}] offsets {self.records[0].offset}-{self.records[-1].offset}"


class KafkaInput(Input):
    Spec = KafkaInputSpec
    spec: KafkaInputSpec
    backends = ASYNCIO_ONLY
    backend_reason = "uses aiokafka"
    requires = ("aiokafka",)
    extra = "kafka"

    def __init__(self, name: str, spec: KafkaInputSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        self.partitions: dict[Any, _Partition] = {}
        """The partitions assigned now, by ``TopicPartition``."""
        self.records = 0
        self.commits = 0
        self.retried = 0
        self.rerouted = 0
        self._decoder = _Decoder(name, spec.format, spec.schema)
        self._retries: list[_Unit] = []
        self._held: list[_Partition] = []
        """Partitions whose fetching is paused while a unit of theirs is retried."""
        self._consumer: Any = None

    # --- run --------------------------------------------------------------------------------------------

    async def run(self, submit: Submit, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        spec = self.spec
        connection = spec.connection()
        consumer = self._consumer = AIOKafkaConsumer(
            **client_options(connection),
            group_id=spec.group,
            enable_auto_commit=False,
            auto_offset_reset=spec.start_from,
            session_timeout_ms=int(spec.session_timeout * 1000),
            heartbeat_interval_ms=int(spec.heartbeat_interval * 1000),
            max_poll_interval_ms=int(spec.max_poll_interval * 1000),
            max_partition_fetch_bytes=spec.max_partition_fetch_bytes,
        )
        consumer.subscribe(topics=spec.topics or (), pattern=spec.pattern, listener=self._listener())
        try:
            await consumer.start()  # returns once the group is joined and partitions assigned
        except KafkaError as exc:
            with anyio.CancelScope(shield=True):
                await consumer.stop()
            raise KafkaInputError(
                f"kafka input {self.name!r} cannot start on {connection.where}: {describe(exc, connection)}"
            ) from None
        what = ",".join(spec.topics) if spec.topics else f"/{spec.pattern}/"
        log.info("kafka input started input=%s topics=%s group=%s", self.name, what, spec.group)
        try:
            task_status.started()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._commit_periodically)
                await self._consume(submit)
                await self._settle(submit)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(10):
                    await self._commit()
                with anyio.move_on_after(10):
                    await consumer.stop()
            log.info(
                "kafka input stopped input=%s records=%d commits=%d retried=%d",
                self.name, self.records, self.commits, self.retried,
            )

    async def _consume(self, submit: Submit) -> None:
        from aiokafka.errors import KafkaError

        consumer = self._consumer
        spec = self.spec
        stopping = self.context.stopping
        partitions = self.partitions
        decode = self._decoder.decode
        while not stopping.is_set():
            if self._retries or self._held:
                await self._retry_due(submit)
            try:
                fetched = await consumer.getmany(timeout_ms=100, max_records=spec.max_records)
            except KafkaError as exc:  # what aiokafka does not retry itself: authorization, a fatal group error
                raise KafkaInputError(
                    f"kafka input {self.name!r} cannot fetch: {describe(exc, spec.connection())}"
                ) from None
            for tp, records in fetched.items():
                partition = partitions.get(tp)
                if partition is None or partition.held or not records:
                    continue  # revoked meanwhile (the new owner reads them), or paused after a failure
                try:
                    ticket = await partition.checkpoint.track(records[-1].offset + 1)
                except Exception:  # a unit of this partition failed: hold it until the retry is written
                    self._hold(partition, records[0].offset)
                    continue
                self.records += len(records)
                delivery = await submit(decode(records, partition.prefix), ticket)
                delivery.on_done(_Unit(self, partition, records, ticket).done)
                # Let the fetcher send the next request for what was drained (and the sinks write) before
                # the next slice: a broker's round trip then overlaps the processing instead of following it.
                await anyio.lowlevel.checkpoint()

    async def _settle(self, submit: Submit) -> None:
        """Wait for the units in flight to be written (retrying failed ones), within the shutdown budget."""
        while any(p.checkpoint.in_flight for p in self.partitions.values()):
            if self._retries or self._held:
                await self._retry_due(submit)
            await anyio.sleep(0.02)

    # --- failed units ---------------------------------------------------------------------------------

    def _failed_unit(self, unit: _Unit) -> None:
        delay = min(self.spec.retry_backoff * 2**unit.attempts, self.spec.retry_max_backoff)
        unit.due = anyio.current_time() + delay
        self._retries.append(unit)

    def _hold(self, partition: _Partition, offset: int) -> None:
        """Stop fetching ``partition`` from ``offset`` on (the first record not tracked) until it recovers."""
        if self.partitions.get(partition.tp) is not partition:
            return
        partition.held = True
        self._held.append(partition)
        self._consumer.seek(partition.tp, offset)
        self._consumer.pause(partition.tp)
        log.warning(
            "kafka partition paused until its failed unit is written input=%s partition=%s[%d] from_offset=%d",
            self.name, partition.tp.topic, partition.tp.partition, offset,
        )

    async def _retry_due(self, submit: Submit) -> None:
        now = anyio.current_time()
        due = [unit for unit in self._retries if unit.due <= now]
        if due:
            self._retries = [unit for unit in self._retries if unit.due > now]
        for unit in due:
            partition = unit.partition
            if self.partitions.get(partition.tp) is not partition:
                continue  # revoked: the new owner reads it again
            unit.attempts += 1
            error = unit.ticket.error
            envelopes = self._decoder.decode(unit.records, partition.prefix)  # the same ids, processed afresh
            if unit.attempts <= self.spec.max_retries:
                self.retried += 1
                log.warning(
                    "kafka unit not written, submitting it again input=%s unit=%s attempt=%d error=%s",
                    self.name, unit.describe(), unit.attempts, error,
                )
                delivery = await submit(envelopes, unit.ticket)
                delivery.on_done(unit.done)
                continue
            if self.spec.on_failure == "stop" or unit.attempts > self.spec.max_retries + 1:
                raise KafkaInputError(
                    f"kafka input {self.name!r}: {unit.describe()} could not be written after "
                    f"{unit.attempts - 1} retries ({error}); nothing past it is committed, a restart reads it again"
                )
            self.rerouted += len(envelopes)
            log.error(
                "kafka unit not written after retries, sending its events to the invalid route input=%s unit=%s "
                "events=%d error=%s", self.name, unit.describe(), len(envelopes), error,
            )
            detail = ErrorDetail(keyword="delivery", message=f"not written after {unit.attempts - 1} retries: {error}")
            for envelope in envelopes:
                envelope.fail(detail)
            delivery = await submit(envelopes, unit.ticket)
            delivery.on_done(unit.done)
        for partition in list(self._held):
            if self.partitions.get(partition.tp) is not partition:
                self._held.remove(partition)  # revoked: its new assignment starts unpaused
            elif not partition.checkpoint.failed:
                self._held.remove(partition)
                partition.held = False
                self._consumer.resume(partition.tp)
                log.info(
                    "kafka partition resumed input=%s partition=%s[%d]",
                    self.name, partition.tp.topic, partition.tp.partition,
                )

    # --- commits ----------------------------------------------------------------------------------------

    async def _commit_periodically(self) -> None:
        while True:
            await anyio.sleep(self.spec.commit_interval)
            await self._commit()

    async def _commit(self, partitions: Iterable[_Partition] | None = None) -> None:
        """Commit each partition's checkpoint if it moved (or a position a failed commit left)."""
        from aiokafka.errors import KafkaError

        offsets: dict[Any, int] = {}
        for partition in list(self.partitions.values()) if partitions is None else partitions:
            position = partition.checkpoint.take()
            if position is not None:
                partition.uncommitted = position
            if partition.uncommitted is not None:
                offsets[partition.tp] = partition.uncommitted
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
        except (KafkaError, AssertionError) as exc:
            # Kept, and committed next time if the partition is still ours; else its new owner reads it again.
            log.warning("kafka commit failed input=%s error=%r", self.name, exc)
            return
        self.commits += 1
        for partition in self.partitions.values() if partitions is None else partitions:
            if partition.uncommitted == offsets.get(partition.tp):
                partition.uncommitted = None

    # --- rebalances -------------------------------------------------------------------------------------

    def _listener(self) -> Any:
        from aiokafka.abc import ConsumerRebalanceListener

        owner = self

        class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                await owner._revoked(revoked)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                owner._assigned(assigned)

        return Listener()

    async def _revoked(self, revoked: Any) -> None:
        """Commit what is written of the revoked partitions and forget the rest (the new owner reads it)."""
        gone = [p for tp in revoked if (p := self.partitions.pop(tp, None)) is not None]
        if not gone:
            return
        await self._commit(gone)
        unsettled = sum(p.checkpoint.in_flight for p in gone)
        log.info(
            "kafka partitions revoked input=%s partitions=%s unsettled_units=%d",
            self.name, _names(p.tp for p in gone), unsettled,
        )

    def _assigned(self, assigned: Any) -> None:
        for tp in assigned:
            if tp not in self.partitions:
                self.partitions[tp] = _Partition(tp, self.spec.max_in_flight)
        log.info("kafka partitions assigned input=%s partitions=%s", self.name, _names(assigned))

    def statistics(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "commits": self.commits,
            "retried": self.retried,
            "rerouted": self.rerouted,
            "partitions": len(self.partitions),
            "in_flight": sum(p.checkpoint.in_flight for p in self.partitions.values()),
        }


def _names(tps: Iterable[Any]) -> str:
    return ",".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in tps)) or "none"
