"""A test sink that holds each write until the test releases it, so batches settle in the order a test picks."""

from __future__ import annotations

from typing import Any

import anyio

from streamer.core.components import Batch, Sink, SinkSpec
from tests.connectors import TEST_CONNECTORS


class GatedSpec(SinkSpec, tag="gated", kw_only=True):
    """A sink whose writes wait for the test."""


class GatedSink(Sink):
    """``held`` maps the Kafka (partition, offset) of each write's first event to the gate it waits on;
    ``release(offset, partition=0)`` lets it finish. ``written`` lists the offsets written, in the order they
    were, and ``written_at`` their (partition, offset). ``holding = False`` lets later writes through."""

    Spec = GatedSpec
    encoding = "none"

    def __init__(self, name: str, spec: Any, context: Any) -> None:
        super().__init__(name, spec, context)
        self.held: dict[tuple[int, int], anyio.Event] = {}
        self.written: list[int] = []
        self.written_at: list[tuple[int, int]] = []
        self.holding = True
        self._gates: list[anyio.Event] = []

    async def write(self, batch: Batch) -> None:
        places = [(e.source.metadata["kafka"]["partition"], e.source.metadata["kafka"]["offset"])
                  for e in batch.envelopes]  # fmt: skip
        if self.holding:
            gate = self.held[places[0]] = anyio.Event()  # a place read again gets a new gate
            self._gates.append(gate)
            await gate.wait()
        self.written.extend(offset for _, offset in places)
        self.written_at.extend(places)

    def release(self, offset: int, partition: int = 0) -> None:
        self.held[(partition, offset)].set()

    def release_all(self) -> None:
        self.holding = False
        for gate in self._gates:
            gate.set()


TEST_CONNECTORS["sink"]["gated"] = "tests.kafka_input.sinks:GatedSink"
