"""Events as Kafka records: one record per envelope, its JSON document as the value.

A batch is acknowledged once every one of its records is acknowledged by the brokers with
``acks=all`` (every in-sync replica has it). The producer is idempotent by default (``idempotent:
true``): a record retried by the client after a lost answer is stored once. Brokers that refuse
idempotence (some Kafka-compatible servers) need ``idempotent: false``; a retry may then store a
record twice.

**Topic.** ``topic`` is a name, or a template of envelope fields in braces: ``events.{schema_vendor}.
{schema_name}`` gives each schema its topic, ``events.{route}`` puts valid and invalid events apart
(``{route}`` is ``valid`` or ``invalid``). A field may be a dotted path (``{source.input}``,
``{tags.team}``, ``{payload.kind}``); characters a topic name cannot hold become ``_``. An envelope
without one of the fields goes to ``fallback_topic``, or fails (fatal) without one.

**Key and headers.** The record key is the envelope field ``key_field`` (default: the event id, so
an event always lands in the same partition, as any Kafka client would place it: murmur2 of the key);
``key_field: null`` writes no key and a batch goes to one partition per topic. ``headers`` lists
envelope fields written as record headers, named by their path; text as UTF-8, other values as JSON,
absent fields left out.

**Topics are never created** unless ``create_topic`` says how: the sink checks that its topics exist
without asking the broker to create them (at start for a fixed topic, on first sight for a template),
and an unknown topic is a fatal error for its records. (A broker with ``auto.create.topics.enable``
still creates a topic that disappears while the producer uses it; turn that off on the broker.)

**Failures.** A broker unreachable, restarting or without a leader, a timeout, too few in-sync
replicas: retryable, the worker backs off and writes again while inputs wait. A record over
``max_record_bytes`` (refused before sending), a topic that does not exist or that the credentials may
not write to: fatal for those records. When only some partitions' records failed, the worker retries
(or gives up on) only those. At start, brokers that cannot be reached, a missing topic or a
compression codec whose library is missing stop the pipeline with one line saying which.

Uses aiokafka, so it runs on asyncio only.

Example::

    sinks:
      events:
        type: kafka
        brokers: [kafka-1.internal:9092, kafka-2.internal:9092]
        topic: "events.{schema_vendor}.{schema_name}"
        fallback_topic: events.other
        key_field: id
        headers: [schema, source.input]
        compression: gzip
        sasl: {mechanism: SCRAM-SHA-512, username: streamer, password: "${KAFKA_PASSWORD}"}
        tls: {ca_file: /etc/ssl/certs/kafka-ca.pem}
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

import msgspec

from streamer.core.components import ASYNCIO_ONLY, Batch, Context, Sink, SinkSpec
from streamer.core.config import PathT
from streamer.core.envelope import Envelope
from streamer.core.errors import BatchError, FatalError, RetryableError, SinkError
from streamer.kafka.records import envelope_getter, template_fields, to_bytes, topic_function, valid_topic
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

__all__ = ["CreateTopic", "KafkaSink", "KafkaSinkError", "KafkaSinkSpec"]

_COMPRESSION_LIBRARY = {"lz4": "cramjam", "zstd": "cramjam", "snappy": "cramjam"}
"""The package aiokafka needs for each codec beyond gzip."""


class CreateTopic(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to create a topic the sink writes to when it does not exist."""

    partitions: Annotated[int, msgspec.Meta(ge=1, description="Partitions of a new topic.", examples=[6])]
    replication_factor: Annotated[
        int, msgspec.Meta(ge=1, description="Replicas of each partition of a new topic.", examples=[3])
    ]


class KafkaSinkSpec(SinkSpec, tag="kafka", kw_only=True):
    """Kafka records, one per event (its JSON document), acknowledged by every in-sync replica."""

    brokers: Brokers
    topic: Annotated[
        str,
        msgspec.Meta(
            description="Topic name, or a template of envelope fields in braces: `{schema_vendor}`, `{schema_name}`, "
            "`{source.input}`, `{tags.team}`, ..., and `{route}` (`valid` or `invalid`). Characters a topic name "
            "cannot hold become `_`.",
            examples=["events", "events.{schema_vendor}.{schema_name}", "events.{route}"],
        ),
    ]
    fallback_topic: Annotated[
        str | None,
        msgspec.Meta(
            description="Topic for events a `topic` template cannot be filled for (a field absent or empty); "
            "without it such events fail (fatal).",
            examples=["events.other"],
        ),
    ] = None
    key_field: Annotated[
        str | None,
        msgspec.Meta(
            description="Envelope field (or dotted path) whose value is the record key; `null`: no key (each batch "
            "goes to one partition per topic). Default: the event id, so an event always lands in the same partition.",
            examples=["id", "source.metadata.user_id", None],
        ),
    ] = "id"
    headers: Annotated[
        list[str],
        msgspec.Meta(
            description="Envelope fields (or dotted paths) written as record headers named by their path: text as "
            "UTF-8, other values as JSON; absent fields are left out.",
            examples=[["schema", "protocol", "source.input"]],
        ),
    ] = msgspec.field(default_factory=list)
    compression: Annotated[
        Literal["none", "gzip", "lz4", "zstd", "snappy"],
        msgspec.Meta(
            description="Compression of record batches. `lz4`, `zstd` and `snappy` need `pip install cramjam`.",
            examples=["gzip"],
        ),
    ] = "none"
    idempotent: Annotated[
        bool,
        msgspec.Meta(
            description="Idempotent producer: a record the client resends after a lost answer is stored once. "
            "Turn off only for brokers that refuse it (some Kafka-compatible servers).",
            examples=[True],
        ),
    ] = True
    create_topic: Annotated[
        CreateTopic | None,
        msgspec.Meta(
            description="Create a missing topic with these `partitions` and `replication_factor`; without it the "
            "sink never creates a topic and a missing one is an error.",
            examples=[{"partitions": 6, "replication_factor": 3}],
        ),
    ] = None
    max_batch_bytes: Annotated[
        int,
        msgspec.Meta(
            ge=1024,
            description="Largest record batch sent to one partition in one request (before compression); a "
            "sink batch for one partition beyond it is sent as several.",
            examples=[262144],
        ),
    ] = 262_144
    max_record_bytes: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Largest record value; a larger event is refused without sending (fatal). Keep it below the "
            "topic's `max.message.bytes`.",
            examples=[1_000_000],
        ),
    ] = 1_000_000
    client_id: ClientId = "streamer"
    tls: TlsOption = None
    sasl: SaslOption = None
    request_timeout: RequestTimeout = 30.0
    metadata_max_age: MetadataMaxAge = 300.0

    def connection(self) -> KafkaConnection:
        return KafkaConnection(
            brokers=self.brokers,
            client_id=self.client_id,
            tls=self.tls,
            sasl=self.sasl,
            request_timeout=self.request_timeout,
            metadata_max_age=self.metadata_max_age,
        )

    def check(self) -> Iterator[tuple[PathT, str]]:
        yield from check_connection(self.connection())
        try:
            fields = template_fields(self.topic)
        except ValueError as exc:
            yield ("topic",), str(exc)
            fields = []
        for name in fields:
            if name == "route":
                continue
            try:
                envelope_getter(name)
            except ValueError as exc:
                yield ("topic",), str(exc)
        if not fields and not valid_topic(self.topic):
            yield ("topic",), f"{self.topic!r} is not a topic name: at most 249 of letters, digits, '.', '_' and '-'"
        if self.fallback_topic is not None:
            if not fields:
                yield ("fallback_topic",), "`fallback_topic` is only used with a `topic` template; leave it out"
            elif not valid_topic(self.fallback_topic):
                yield ("fallback_topic",), f"{self.fallback_topic!r} is not a topic name"
        for index, path in enumerate([self.key_field, *self.headers]):
            if path is None:
                continue
            try:
                envelope_getter(path)
            except ValueError as exc:
                yield ("key_field",) if index == 0 else ("headers", index - 1), str(exc)
        library = _COMPRESSION_LIBRARY.get(self.compression)
        if library is not None and importlib.util.find_spec(library) is None:
            yield ("compression",), f"`{self.compression}` compression needs {library}: pip install {library}"


class KafkaSinkError(Exception):
    """The sink cannot start: the brokers, a topic or the settings are not what the config says."""


_FATAL_ERRORS = (
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "TopicAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "TransactionalIdAuthorizationFailedError",
    "InvalidTopicError",
    "UnsupportedVersionError",
    "UnsupportedForMessageFormatError",
    "CorruptRecordException",
    "InvalidRecordError",
)
"""aiokafka errors no retry can fix. Everything else (a lost connection, a timeout, a leader moving, too
few in-sync replicas, an unknown broker error) may pass: retryable."""


def _is_fatal(exc: BaseException) -> bool:
    return type(exc).__name__ in _FATAL_ERRORS or isinstance(exc, FatalError)


class _Missing(Exception):
    """A topic the sink may not create does not exist."""


class KafkaSink(Sink):
    Spec = KafkaSinkSpec
    spec: KafkaSinkSpec
    backends = ASYNCIO_ONLY
    backend_reason = "uses aiokafka"
    requires = ("aiokafka",)
    extra = "kafka"

    def __init__(self, name: str, spec: KafkaSinkSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        self._connection = spec.connection()
        self._producer: Any = None
        self._admin: Any = None
        self._partitioner: Any = None
        self._known: set[str] = set()
        """Topics checked to exist (or created)."""
        self._missing: dict[str, str] = {}
        """Topics found missing, with why, so a template does not ask again for each batch."""
        self._fixed: str | None = None
        self._topic_of = topic_function(spec.topic, spec.fallback_topic)
        if not template_fields(spec.topic):
            self._fixed = spec.topic
        self._key_of: Callable[[Envelope], bytes | None] | None = None
        if spec.key_field is not None:
            get_key = envelope_getter(spec.key_field)
            self._key_of = lambda envelope: to_bytes(get_key(envelope))
        self._header_getters = [(path, envelope_getter(path)) for path in spec.headers]

    # --- topics ----------------------------------------------------------------------------------

    async def _ensure_topic(self, topic: str) -> None:
        """Check ``topic`` exists without letting the broker create it; create it when ``create_topic`` says
        how. Raises :class:`_Missing` for a topic that does not exist and may not be created."""
        if topic in self._known:
            return
        if topic in self._missing:
            raise _Missing(self._missing[topic])
        from aiokafka.protocol.metadata import MetadataRequest

        client = self._producer.client
        node = client.get_random_node()
        if node is None:
            await client.force_metadata_update()
            node = client.get_random_node()
        # allow_auto_topic_creation=False: a plain metadata request (aiokafka's) creates the topic on brokers
        # with auto.create.topics.enable.
        response = await client.send(node, MetadataRequest([topic], allow_auto_topic_creation=False))
        error = next((t[0] for t in response.topics if t[1] == topic), 3)
        if error == 3:  # UNKNOWN_TOPIC_OR_PARTITION
            if self.spec.create_topic is None:
                why = (
                    f"topic {topic!r} does not exist; create it, or set create_topic: "
                    "{partitions, replication_factor}"
                )
                self._missing[topic] = why
                raise _Missing(why)
            await self._create(topic)
        elif error == 29:  # TOPIC_AUTHORIZATION_FAILED
            raise FatalError(f"not authorized to write to topic {topic!r} (check the ACLs of the SASL user)")
        elif error:
            from aiokafka.errors import for_code

            raise for_code(error)(f"metadata of topic {topic!r}")
        await self._producer.partitions_for(topic)  # the producer learns the layout (the topic exists now)
        self._known.add(topic)

    async def _create(self, topic: str) -> None:
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import for_code

        create = self.spec.create_topic
        assert create is not None
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_options(self._connection))
            await admin.start()
            self._admin = admin
        response = await self._admin.create_topics([NewTopic(topic, create.partitions, create.replication_factor)])
        for _, code, *rest in response.topic_errors:
            if code not in (0, 36):  # 36: TOPIC_ALREADY_EXISTS (created meanwhile by someone else)
                message = rest[0] if rest and rest[0] else ""
                raise for_code(code)(f"cannot create topic {topic!r}: {message}")
        # A new topic's partitions get their leaders a moment after the answer.
        for _ in range(50):
            await self._producer.client.force_metadata_update()
            if self._producer.client.cluster.available_partitions_for_topic(topic):
                return
            await asyncio.sleep(0.1)

    # --- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError
        from aiokafka.partitioner import DefaultPartitioner

        spec = self.spec
        connection = self._connection
        self._partitioner = DefaultPartitioner()
        producer = AIOKafkaProducer(
            acks="all",
            enable_idempotence=spec.idempotent,
            compression_type=None if spec.compression == "none" else spec.compression,
            linger_ms=0,  # the sink worker batches; a batch is handed over whole
            max_batch_size=spec.max_batch_bytes,
            max_request_size=max(spec.max_record_bytes + 4096, 1_048_576),
            **client_options(connection),
        )
        try:
            await producer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            await producer.stop()
            raise KafkaSinkError(self._start_failure(exc)) from exc
        self._producer = producer
        topics = [self._fixed] if self._fixed is not None else []
        if self._fixed is None and spec.fallback_topic is not None:
            topics.append(spec.fallback_topic)
        try:
            for topic in topics:
                await self._ensure_topic(topic)
        except _Missing as exc:
            await self.aclose()
            raise KafkaSinkError(f"sink {self.name}: {exc}") from None
        except (KafkaError, OSError, TimeoutError, SinkError) as exc:
            await self.aclose()
            raise KafkaSinkError(
                f"sink {self.name}: cannot check topics {', '.join(topics)} at {connection.where}: "
                f"{describe(exc, connection)}"
            ) from exc

    def _start_failure(self, exc: BaseException) -> str:
        """Why the producer did not start, and what to check, in one line."""
        from aiokafka.errors import KafkaConnectionError

        connection = self._connection
        if isinstance(exc, KafkaConnectionError | OSError | TimeoutError):
            return (
                f"sink {self.name}: cannot reach Kafka at {connection.where}: {describe(exc, connection)}; check "
                "`brokers`, that they are up and reachable from here, and the `tls`/`sasl` settings"
            )
        hint = (
            "; brokers that do not support the idempotent producer (InitProducerId) need idempotent: false"
            if self.spec.idempotent
            else ""
        )
        return f"sink {self.name}: Kafka at {connection.where} refused the producer: {describe(exc, connection)}{hint}"

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()
        if producer is not None:
            # stop() flushes what is pending; bounded so that a dead broker cannot hold the shutdown.
            try:
                await asyncio.wait_for(producer.stop(), self.spec.request_timeout + 5)
            except TimeoutError:
                pass

    # --- writing ---------------------------------------------------------------------------------

    async def write(self, batch: Batch) -> None:
        envelopes = batch.envelopes
        if not envelopes:
            return
        producer = self._producer
        if producer is None:
            raise RetryableError(f"sink {self.name} is not open")
        lines = batch.lines
        failures: dict[int, BaseException] = {}
        # Records are appended to one builder per (topic, partition); a full builder is handed to the producer
        # at once (its records are sent while the rest are built) and a new one started.
        builders: dict[tuple[str, int], tuple[Any, list[int]]] = {}
        pending: list[tuple[Any, list[int]]] = []
        layouts: dict[str, tuple[list[int], list[int], int]] = {}
        broken: dict[str, BaseException] = {}
        cluster = producer.client.cluster
        partition_of = self._partitioner
        topic_of = self._topic_of
        fixed = self._fixed
        key_of = self._key_of
        header_getters = self._header_getters
        limit = self.spec.max_record_bytes

        for index, envelope in enumerate(envelopes):
            value = lines[index]
            if len(value) > limit:
                failures[index] = FatalError(f"event of {len(value)} bytes is over max_record_bytes ({limit})")
                continue
            topic = fixed if fixed is not None else topic_of(envelope)
            if topic is None:
                failures[index] = FatalError(
                    f"no topic for event {envelope.id}: a field of {self.spec.topic!r} is absent (set fallback_topic)"
                )
                continue
            layout = layouts.get(topic)
            if layout is None:
                if topic in broken:
                    failures[index] = broken[topic]
                    continue
                try:
                    await self._ensure_topic(topic)
                except _Missing as exc:
                    failures[index] = broken[topic] = FatalError(str(exc))
                    continue
                except Exception as exc:
                    failures[index] = broken[topic] = exc
                    continue
                every = sorted(cluster.partitions_for_topic(topic) or ())
                available = list(cluster.available_partitions_for_topic(topic) or ())
                if not every:
                    failures[index] = RetryableError(f"no partitions known for topic {topic!r}")
                    continue
                layout = layouts[topic] = (every, available, random.choice(available or every))
            key = key_of(envelope) if key_of is not None else None
            partition = layout[2] if key is None else partition_of(key, layout[0], layout[1])
            headers = []
            for name, get in header_getters:
                header = to_bytes(get(envelope))
                if header is not None:
                    headers.append((name, header))
            # The record's time is the event's collector time, so a time window means the same events in
            # Kafka as in any other store (what a migration's verification counts).
            stamp = int(envelope.collector_tstamp.timestamp() * 1000)
            slot = builders.get((topic, partition))
            if slot is None:
                slot = builders[(topic, partition)] = (producer.create_batch(), [])
            if slot[0].append(key=key, value=value, timestamp=stamp, headers=headers) is None:
                pending.append(await self._submit(slot, topic, partition, failures))
                slot = builders[(topic, partition)] = (producer.create_batch(), [])
                slot[0].append(key=key, value=value, timestamp=stamp, headers=headers)
            slot[1].append(index)

        for (topic, partition), slot in builders.items():
            pending.append(await self._submit(slot, topic, partition, failures))
        sent = [(future, indexes) for future, indexes in pending if future is not None]
        results = await asyncio.gather(*(future for future, _ in sent), return_exceptions=True)
        for result, (_, indexes) in zip(results, sent, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                for index in indexes:
                    failures[index] = result
        if failures:
            raise self._failure(failures, len(envelopes))

    async def _submit(
        self, slot: tuple[Any, list[int]], topic: str, partition: int, failures: dict[int, BaseException]
    ) -> tuple[Any, list[int]]:
        """Hand a full builder to the producer; its future, or None with its records in ``failures``."""
        builder, indexes = slot
        builder.close()
        try:
            return await self._producer.send_batch(builder, topic, partition=partition), indexes
        except Exception as exc:
            for index in indexes:
                failures[index] = exc
            return None, indexes

    def _failure(self, failures: dict[int, BaseException], total: int) -> SinkError:
        """The error for a batch whose records at ``failures`` were not acknowledged."""
        connection = self._connection
        first = next(iter(failures.values()))
        message = (
            f"{len(failures)} of {total} records not written to Kafka at {connection.where}: "
            f"{describe(first, connection)}"
        )
        fatal = [_is_fatal(exc) for exc in failures.values()]
        if len(failures) == total:
            if all(fatal):
                return FatalError(message)
            return RetryableError(message)
        indexes = sorted(failures)
        return BatchError(
            message,
            indexes,
            retryable=not all(fatal),
            errors=[describe(failures[index], connection) for index in indexes],
        )
