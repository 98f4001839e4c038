"""Connectors used only by tests: a sink whose writes the test controls."""

from __future__ import annotations

from typing import Any

import anyio

from streamer.core.components import ASYNCIO_ONLY, Batch, Sink, SinkSpec

TEST_CONNECTORS = {
    "sink": {
        "controlled": "tests.connectors:ControlledSink",
        "asyncio_only": "tests.connectors:AsyncioOnlySink",
        "flaky": "tests.flaky_sink:FlakySink",
        "rows": "tests.flaky_sink:RowsSink",
        "needs_missing": "tests.connectors:NeedsMissingSink",
    }
}


class ControlledSpec(SinkSpec, tag="controlled", kw_only=True):
    """A sink that blocks or fails on demand."""


class ControlledSink(Sink):
    """Writes to a list; ``block()`` holds writes until ``release()``, ``fail_with`` makes them raise."""

    Spec = ControlledSpec

    def __init__(self, name: str, spec: Any, context: Any) -> None:
        super().__init__(name, spec, context)
        self.lines: list[bytes] = []
        self.attempts = 0
        self.fail_with: Exception | None = None
        self._gate: anyio.Event | None = None
        self.waiting = anyio.Event()

    def block(self) -> None:
        self._gate = anyio.Event()

    def release(self) -> None:
        if self._gate is not None:
            self._gate.set()
            self._gate = None

    async def write(self, batch: Batch) -> None:
        self.attempts += 1
        gate = self._gate
        if gate is not None:
            self.waiting.set()
            await gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.lines.extend(batch.lines)


class AsyncioOnlySpec(SinkSpec, tag="asyncio_only", kw_only=True):
    """Stands for a sink built on an asyncio-only client library."""


class AsyncioOnlySink(ControlledSink):
    Spec = AsyncioOnlySpec
    backends = ASYNCIO_ONLY
    backend_reason = "uses an asyncio-only client"


class NeedsMissingSpec(SinkSpec, tag="needs_missing", kw_only=True):
    """Stands for a sink whose client library is not installed."""


class NeedsMissingSink(ControlledSink):
    Spec = NeedsMissingSpec
    requires = ("no_such_module_xyz",)
