"""How an input hands a unit to the pipeline: at once when it can (``submit.nowait``), else by waiting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from streamer.core.delivery import Delivery
from streamer.core.envelope import Envelope, Source, new_event_id, utc_now
from streamer.core.graph import build_pipeline
from streamer.core.runtime import Pipeline
from tests.support import SCHEMAS, anyio_backend_name, compile_text

pytestmark = pytest.mark.anyio

PIPELINE = """
inputs:
  web: {type: http, port: 0}
processors:
  - type: validate
  - type: annotate
    tags: {stage: test}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  out: {type: controlled, route: all, delivery: {buffer: 1}}
"""
PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"


def unit(schema: str = PAGE_VIEW) -> list[Envelope]:
    envelope = Envelope(
        id=new_event_id(), collector_tstamp=utc_now(), source=Source(input="web"), protocol="self_describing",
        payload={"url": "https://example.com/"}, schema=schema,
    )  # fmt: skip
    return [envelope]


@asynccontextmanager
async def pipeline(tmp_path: Path) -> AsyncIterator[Pipeline]:
    """A pipeline whose sink worker does not run: the test takes from its buffer."""
    compiled = compile_text(PIPELINE, {"SCHEMAS": str(SCHEMAS)})
    built = build_pipeline(compiled, anyio_backend_name(), base_dir=tmp_path)
    await built.resolver.open()
    try:
        yield built
    finally:
        for worker in built.workers:
            worker.close()
        await built.resolver.aclose()


async def test_nowait_waits_for_a_schema_it_has_not_seen_and_not_after(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as p:
        first = unit()
        pending = p.submit_nowait(first)
        assert not isinstance(pending, Delivery)
        assert first[0].tags is None  # nothing done twice nor half: validate had to wait, annotate did not run
        delivery = await pending
        assert isinstance(delivery, Delivery) and first[0].valid and first[0].tags == {"stage": "test"}
        worker = p.workers[0]
        assert worker.send_stream.statistics().current_buffer_used == 1
        worker._receive.receive_nowait()  # what the sink worker would do
        second = unit()
        assert isinstance(p.submit_nowait(second), Delivery)  # the schema is cached now
        assert second[0].valid and second[0].tags == {"stage": "test"}


async def test_nowait_hands_back_the_wait_when_a_sink_buffer_is_full(tmp_path: Path) -> None:
    async with pipeline(tmp_path) as p:
        await p.submit(unit())  # resolves the schema and fills the buffer of one
        pending = p.submit_nowait(unit())
        assert not isinstance(pending, Delivery)
        worker = p.workers[0]

        async def take_one() -> None:
            await anyio.sleep(0.05)
            worker._receive.receive_nowait()

        with anyio.fail_after(2):
            async with anyio.create_task_group() as tg:
                tg.start_soon(take_one)
                delivery = await pending
        assert isinstance(delivery, Delivery) and delivery.pending == 1  # sent once there was room, not settled
