"""The sink conformance suite: the same tests for every sink, built-in or plugin.

Like Benthos' shared integration suite and Vector's component compliance checks, it keeps every sink
to the contract of :class:`~streamer.core.components.Sink`:

- ``write`` returns only when the batch is durable: what an independent reader finds afterwards is
  every envelope of the batch, field by field;
- a failure raises a :mod:`streamer.core.errors` class the worker can act on (a destination that is
  down is a :class:`~streamer.core.errors.RetryableError`);
- ``aclose`` flushes: what was written is readable after it;
- an empty batch is a no-op;
- a batch written twice in a row lands twice, or once for sinks that are idempotent on the event id.

Use it from a pytest module (with the ``anyio`` plugin) by subclassing :class:`SinkConformance`::

    from streamer.testing import SinkConformance

    class TestMySinkConformance(SinkConformance):
        async def open_sink(self, destination): ...     # an opened sink writing to ``destination``
        async def read_back(self, destination): ...     # what ``destination`` holds, as envelope dicts
        async def open_broken_sink(self, destination): ...  # a sink whose server is unreachable

``destination`` comes from the ``destination`` fixture, which a subclass overrides to give each test
a fresh place to write (a file path, a topic name, a table name). Sinks that keep only some envelope
fields override :meth:`SinkConformance.stored` to say which. Nothing here is imported by a running
pipeline; it needs ``pytest``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec
import pytest

from streamer.core.components import Batch, BatchEncoder, Sink
from streamer.core.envelope import Envelope, ErrorDetail, SelfDescribing, Source
from streamer.core.errors import RetryableError, SinkError, is_retryable

__all__ = ["SinkConformance", "sample_envelopes"]


def sample_envelopes(count: int, *, input_name: str = "conformance", invalid_every: int = 5) -> list[Envelope]:
    """``count`` envelopes exercising the envelope's shapes: contexts, tags, unicode, nested data,
    source headers and metadata, and every ``invalid_every``-th one invalid with errors."""
    source = Source(
        input=input_name,
        client_ip="203.0.113.7",
        user_agent="conformance/1.0",
        headers={"content-type": "application/json"},
        metadata={"partition": 3, "offset": 41},
    )
    out = []
    for index in range(count):
        envelope = Envelope(
            id=f"00000000-0000-4000-8000-{index:012d}",
            collector_tstamp=datetime(2026, 12, 4, 10, 0, index % 60, 123000 + index, tzinfo=UTC),
            source=source,
            protocol="self_describing",
            payload={"n": index, "text": "caf\u00e9 \u2603 \"quoted\"\nnew line", "nested": {"list": [1, 2.5, None]}},
            schema="iglu:com.example/conformance/jsonschema/1-0-0",
            schema_vendor="com.example",
            schema_name="conformance",
            schema_format="jsonschema",
            schema_version="1-0-0",
            event_tstamp=datetime(2026, 12, 4, 9, 59, 59, 1000, tzinfo=UTC),
            contexts=[SelfDescribing(schema="iglu:com.example/ctx/jsonschema/1-0-0", data={"k": index})],
            tags={"batch": "conformance"},
        )
        if invalid_every and index % invalid_every == invalid_every - 1:
            envelope.fail(ErrorDetail(path="$.n", keyword="maximum", message=f"{index} is too large"))
        out.append(envelope)
    return out


class SinkConformance:
    """Tests every sink must pass; subclass and implement the three hooks (see the module docstring)."""

    idempotent: ClassVar[bool] = False
    """True for sinks that store an event id once however often it is written (then a second write of
    the same batch adds nothing)."""
    ordered: ClassVar[bool] = True
    """True when ``read_back`` returns envelopes in the order they were written."""
    batch_size: ClassVar[int] = 25

    @pytest.fixture
    def destination(self, tmp_path: Any) -> Any:
        """Where one test writes; override to give a fresh topic, table, bucket prefix, ..."""
        return tmp_path / "conformance.jsonl"

    async def open_sink(self, destination: Any) -> Sink:
        raise NotImplementedError

    async def read_back(self, destination: Any) -> list[dict[str, Any]]:
        """Every envelope ``destination`` holds, read by a client independent of the sink."""
        raise NotImplementedError

    async def open_broken_sink(self, destination: Any) -> Sink:
        """A sink for ``destination`` whose server cannot be reached when it writes (a closed port, a
        server stopped after the sink opened); opened when it can be. Its ``aclose`` must not hang."""
        raise NotImplementedError

    def stored(self, envelope: dict[str, Any]) -> dict[str, Any]:
        """The part of an envelope (as JSON) that this sink keeps; all of it by default."""
        return envelope

    # --- helpers ------------------------------------------------------------------------------

    def make_batch(self, sink: Sink, envelopes: list[Envelope]) -> Batch:
        """The batch a sink worker would hand this sink."""
        return BatchEncoder(sink.encoding).batch(envelopes)

    def expected(self, envelopes: list[Envelope]) -> list[dict[str, Any]]:
        return [self.stored(msgspec.json.decode(msgspec.json.encode(e))) for e in envelopes]

    def comparable(self, rows: list[dict[str, Any]]) -> list[Any]:
        rows = [self.stored(row) for row in rows]
        if self.ordered:
            return rows
        return sorted(rows, key=lambda row: msgspec.json.encode(row, order="sorted"))

    @asynccontextmanager
    async def opened(self, destination: Any) -> AsyncIterator[Sink]:
        sink = await self.open_sink(destination)
        try:
            yield sink
        finally:
            await sink.aclose()

    # --- the suite ----------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_write_returns_when_durable_and_read_back_equals_envelopes(self, destination: Any) -> None:
        envelopes = sample_envelopes(self.batch_size)
        async with self.opened(destination) as sink:
            await sink.write(self.make_batch(sink, envelopes))
            # Read while the sink is still open: a write that returned must already be durable.
            assert self.comparable(await self.read_back(destination)) == self.comparable(self.expected(envelopes))

    @pytest.mark.anyio
    async def test_batches_accumulate(self, destination: Any) -> None:
        first, second = sample_envelopes(2 * self.batch_size)[: self.batch_size], sample_envelopes(
            2 * self.batch_size
        )[self.batch_size :]
        async with self.opened(destination) as sink:
            await sink.write(self.make_batch(sink, first))
            await sink.write(self.make_batch(sink, second))
        got = await self.read_back(destination)
        assert self.comparable(got) == self.comparable(self.expected(first + second))

    @pytest.mark.anyio
    async def test_close_flushes(self, destination: Any) -> None:
        envelopes = sample_envelopes(3)
        sink = await self.open_sink(destination)
        await sink.write(self.make_batch(sink, envelopes))
        await sink.aclose()
        assert self.comparable(await self.read_back(destination)) == self.comparable(self.expected(envelopes))

    @pytest.mark.anyio
    async def test_empty_batch_is_a_no_op(self, destination: Any) -> None:
        async with self.opened(destination) as sink:
            await sink.write(self.make_batch(sink, []))
        assert await self.read_back(destination) == []

    @pytest.mark.anyio
    async def test_rewrite_of_a_batch(self, destination: Any) -> None:
        envelopes = sample_envelopes(4)
        async with self.opened(destination) as sink:
            await sink.write(self.make_batch(sink, envelopes))
            await sink.write(self.make_batch(sink, envelopes))
        expected = self.expected(envelopes) if self.idempotent else self.expected(envelopes + envelopes)
        assert self.comparable(await self.read_back(destination)) == self.comparable(expected)

    @pytest.mark.anyio
    async def test_unreachable_destination_raises_retryable(self, destination: Any) -> None:
        sink = await self.open_broken_sink(destination)
        try:
            with pytest.raises(SinkError) as raised:
                await sink.write(self.make_batch(sink, sample_envelopes(2)))
            assert isinstance(raised.value, RetryableError), f"expected RetryableError, got {raised.value!r}"
            assert is_retryable(raised.value)
        finally:
            await sink.aclose()

