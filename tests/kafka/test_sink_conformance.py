"""The sink conformance suite (streamer.testing) run against the kafka sink, on Tansu."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streamer.core.components import Sink
from streamer.testing import SinkConformance
from tests.kafka.conftest import Broker, create_topic, make_sink, need_tansu, read_records
from tests.registry.conftest import free_port

pytestmark = pytest.mark.services


class TestKafkaSinkConformance(SinkConformance):
    # One partition: Kafka orders records within a partition only, and the suite compares in order.
    ordered = True

    @pytest.fixture
    async def destination(self, kafka: str, topic: str) -> tuple[str, str]:
        await create_topic(kafka, topic, partitions=1)
        return kafka, topic

    async def open_sink(self, destination: Any) -> Sink:
        brokers, topic = destination
        sink = make_sink(brokers, topic)
        await sink.open()
        return sink

    async def read_back(self, destination: Any) -> list[dict[str, Any]]:
        brokers, topic = destination
        return [json.loads(record.value) for record in await read_records(brokers, topic, idle=0.5)]

    async def open_broken_sink(self, destination: Any) -> Sink:
        # A broker of its own, stopped once the sink is open: the write finds no broker and, after
        # request_timeout, raises a retryable error.
        _, topic = destination
        broker = Broker(need_tansu(), free_port())
        broker.start()
        try:
            await create_topic(broker.address, topic, partitions=1)
            sink = make_sink(broker.address, topic, request_timeout=1)
            await sink.open()
        finally:
            broker.stop()
        return sink
