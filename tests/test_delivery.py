"""Delivery: the acknowledgement of one input unit, settled by sink workers, awaited by the input."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import httpx
import pytest

from streamer.core.delivery import Delivery, DeliveryFailed, LoopEvent
from tests.support import PAGE_VIEW, http_port, running, serving, sink

pytestmark = pytest.mark.anyio

EVENT = {"schema": PAGE_VIEW, "data": {"url": "https://example.com/"}}


async def _waiter_woke(delivery: Delivery, meanwhile: Callable[[list[bool]], Awaitable[None]]) -> list[bool]:
    """Run ``meanwhile`` while a task waits on ``delivery``; what the waiter recorded when it woke."""
    woke: list[bool] = []

    async def waiter() -> None:
        await delivery.wait()
        woke.append(True)

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await anyio.sleep(0.01)
            await meanwhile(woke)
    return woke


def test_a_new_unit_owes_nothing_and_is_not_done() -> None:
    delivery = Delivery()
    assert (delivery.pending, delivery.done, delivery.failure) == (0, False, None)


def test_copies_owed_add_up() -> None:
    delivery = Delivery()
    delivery.owe(1)
    delivery.owe(2)
    assert delivery.pending == 3
    delivery.settle()
    delivery.settle()
    assert (delivery.pending, delivery.done) == (1, False)
    delivery.settle()
    assert (delivery.pending, delivery.done) == (0, True)


async def test_a_unit_owing_nothing_is_done_at_once() -> None:
    delivery = Delivery()
    delivery.owe(0)
    assert delivery.done
    with anyio.fail_after(1):
        await delivery.wait()


async def test_a_unit_settled_before_the_wait_returns_at_once() -> None:
    delivery = Delivery()
    delivery.owe(2)
    delivery.settle()
    assert not delivery.done
    delivery.settle()
    assert delivery.done
    with anyio.fail_after(1):
        await delivery.wait()


async def test_the_waiter_wakes_when_the_last_copy_is_settled() -> None:
    delivery = Delivery()
    delivery.owe(2)

    async def settle_both(woke: list[bool]) -> None:
        delivery.settle()
        await anyio.sleep(0.01)
        assert woke == []  # one copy still owed
        delivery.settle()

    assert await _waiter_woke(delivery, settle_both) == [True]


async def test_the_first_failure_is_raised_to_the_waiter() -> None:
    delivery = Delivery(anyio.Event)
    delivery.owe(2)
    first = DeliveryFailed("a", OSError("disk full"))

    async def fail_later() -> None:
        await anyio.sleep(0.01)
        delivery.fail(first)
        delivery.fail(DeliveryFailed("b", OSError("other")))

    with anyio.fail_after(1):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail_later)
            with pytest.raises(DeliveryFailed) as raised:
                await delivery.wait()
    assert raised.value is first
    assert str(raised.value) == "sink 'a' failed to write: disk full"
    assert raised.value.sink == "a"
    assert isinstance(raised.value.cause, OSError) and raised.value.cause.args == ("disk full",)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_asyncio_loop_event_wakes_after_a_cancelled_waiter(anyio_backend: str) -> None:
    delivery = Delivery(LoopEvent)
    delivery.owe(1)
    with anyio.move_on_after(0.01) as scope:
        await delivery.wait()  # an HTTP request that timed out
    assert scope.cancelled_caught

    async def settle(woke: list[bool]) -> None:
        assert woke == []
        delivery.settle()

    assert await _waiter_woke(delivery, settle) == [True]
    with anyio.fail_after(1):
        await delivery.wait()  # settled: returns at once


def test_on_done_is_called_once_when_the_unit_is_done() -> None:
    calls: list[Delivery] = []
    delivery = Delivery()
    delivery.owe(2)
    delivery.on_done(calls.append)
    delivery.settle()
    assert calls == []
    delivery.fail(DeliveryFailed("out", OSError("disk full")))
    delivery.settle()  # a late settle after the failure finishes nothing more
    assert calls == [delivery] and delivery.failure is not None


def test_on_done_of_a_done_unit_is_called_at_once() -> None:
    calls: list[Delivery] = []
    delivery = Delivery()
    delivery.owe(0)
    delivery.on_done(calls.append)
    assert calls == [delivery]



# Retries: exponential backoff with "equal jitter". The k-th retry (k = 1, 2, ...) waits a duration drawn
# in [c/2, c] where c = min(retry_backoff * 2**(k-1), retry_max_backoff) (30 s by default); the bounds of
# `retry_delay` itself are tested in test_dead_letters.py. This measures the waits the worker really makes.

RETRYING = """
inputs:
  web: {type: http, port: 0}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  out: {type: flaky, route: all, delivery: {retries: 3, retry_backoff: 0.05}}
"""


async def test_a_failing_write_is_retried_with_doubling_jittered_backoff(tmp_path: Path) -> None:
    async with running(RETRYING, tmp_path) as p:
        flaky = sink(p, "out")
        flaky.down = True
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"http://127.0.0.1:{http_port(p)}/events", json=EVENT)
        assert response.status_code == 500
        assert response.json() == {
            "error": "sink_failed", "message": "sink 'out' failed to write: connection refused",
        }  # fmt: skip
    times = flaky.attempt_times
    assert len(times) == 4  # the first try and 3 retries
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Each gap is at least its lower bound (a timer does not fire early; 5 ms for clock granularity) and
    # at most its upper bound plus scheduling delay on a busy machine.
    for k, (gap, (low, high)) in enumerate(zip(gaps, [(0.025, 0.05), (0.05, 0.1), (0.1, 0.2)], strict=True), 1):
        assert low - 0.005 <= gap <= high + 0.15, f"retry {k} waited {gap:.3f} s, not in [{low}, {high}]"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_loop_event_set_before_the_wait_returns_at_once(anyio_backend: str) -> None:
    event = LoopEvent()
    assert event.is_set() is False
    event.set()
    event.set()  # idempotent
    assert event.is_set() is True
    with anyio.fail_after(1):
        await event.wait()
        await event.wait()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_loop_event_set_after_a_cancelled_wait_returns_at_once(anyio_backend: str) -> None:
    event = LoopEvent()
    with anyio.move_on_after(0.01) as scope:
        await event.wait()
    assert scope.cancelled_caught and not event.is_set()
    event.set()
    with anyio.fail_after(1):
        await event.wait()


def batching(delivery: str) -> str:
    return f"""
inputs:
  web: {{type: http, port: 0}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  out: {{type: flaky, route: all, delivery: {delivery}}}
"""


async def post_together(port: int, count: int) -> list[int]:
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=10) as client:

        async def send() -> None:
            statuses.append((await client.post(f"http://127.0.0.1:{port}/events", json=EVENT)).status_code)

        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(send)
    return statuses


async def test_linger_gathers_units_into_a_batch_of_at_most_batch_size(tmp_path: Path) -> None:
    async with serving(batching("{linger: 0.5, batch_size: 3}"), tmp_path, "warm") as p:
        flaky = sink(p, "out")
        assert await post_together(http_port(p), 5) == [200] * 5
    # The first batch is written once it holds 3 events, without waiting; the last 2 wait out the linger.
    assert [len(ids) for ids in flaky.attempts] == [3, 2]
    assert 0.5 - 0.005 <= flaky.attempt_times[1] - flaky.attempt_times[0] <= 0.5 + 0.5


async def test_without_linger_a_lone_unit_is_written_at_once(tmp_path: Path) -> None:
    async with serving(batching("{linger: 0, batch_size: 3}"), tmp_path, "warm") as p:
        flaky = sink(p, "out")
        started = anyio.current_time()
        assert await post_together(http_port(p), 1) == [200]
        assert anyio.current_time() - started < 0.5
    assert [len(ids) for ids in flaky.attempts] == [1]


async def test_max_in_flight_writes_that_many_batches_at_once(tmp_path: Path) -> None:
    async with serving(batching("{max_in_flight: 2, batch_size: 1}"), tmp_path, "warm") as p:
        flaky = sink(p, "out")
        flaky.delay = 0.2
        assert await post_together(http_port(p), 4) == [200] * 4
    assert (flaky.peak_in_flight, len(flaky.attempts)) == (2, 4)


async def test_max_in_flight_1_writes_one_batch_at_a_time(tmp_path: Path) -> None:
    async with serving(batching("{max_in_flight: 1, batch_size: 1}"), tmp_path, "warm") as p:
        flaky = sink(p, "out")
        flaky.delay = 0.05
        assert await post_together(http_port(p), 3) == [200] * 3
    assert (flaky.peak_in_flight, len(flaky.attempts)) == (1, 3)
