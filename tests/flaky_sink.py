"""A test sink that fails in the ways real sinks do: per record, fatally, slowly, several writes at once."""

from __future__ import annotations

from typing import Any

import anyio

from streamer.core.components import Batch, Sink, SinkSpec
from streamer.core.errors import BatchError, FatalError, RetryableError


class FlakySpec(SinkSpec, tag="flaky", kw_only=True):
    """A sink whose failures the test sets."""


class FlakySink(Sink):
    """Keeps what it wrote in ``written`` (event ids, in order) and each attempt's ids in ``attempts``.

    ``reject``: ids refused per record (a BatchError naming them) on their first ``reject_times`` attempts;
    ``fatal``: a FatalError for every write; ``down``: a RetryableError for every write; ``delay``: seconds
    each write takes (``in_flight`` / ``peak_in_flight`` count overlapping writes).
    """

    Spec = FlakySpec

    def __init__(self, name: str, spec: Any, context: Any) -> None:
        super().__init__(name, spec, context)
        self.written: list[str] = []
        self.attempts: list[list[str]] = []
        self.attempt_times: list[float] = []
        self.reject: set[str] = set()
        self.reject_times = 1
        self.fatal = False
        self.down = False
        self.delay = 0.0
        self.in_flight = 0
        self.peak_in_flight = 0
        self._refused: dict[str, int] = {}

    async def write(self, batch: Batch) -> None:
        ids = [e.id for e in batch.envelopes]
        self.attempts.append(ids)
        self.attempt_times.append(anyio.current_time())
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay:
                await anyio.sleep(self.delay)
            if self.fatal:
                raise FatalError("record too large")
            if self.down:
                raise RetryableError("connection refused")
            failed = []
            for index, event_id in enumerate(ids):
                if event_id in self.reject and self._refused.get(event_id, 0) < self.reject_times:
                    self._refused[event_id] = self._refused.get(event_id, 0) + 1
                    failed.append(index)
                else:
                    self.written.append(event_id)
            if failed:
                raise BatchError(f"{len(failed)} of {len(ids)} records refused", failed)
        finally:
            self.in_flight -= 1


class RowsSpec(SinkSpec, tag="rows", kw_only=True):
    """A sink that maps envelopes to rows itself (no JSON lines)."""


class RowsSink(Sink):
    Spec = RowsSpec
    encoding = "none"

    def __init__(self, name: str, spec: Any, context: Any) -> None:
        super().__init__(name, spec, context)
        self.rows: list[tuple[str, bool]] = []
        self.data_seen: list[bytes] = []

    async def write(self, batch: Batch) -> None:
        self.data_seen.append(bytes(batch.data))
        self.rows.extend((e.id, e.valid) for e in batch.envelopes)
