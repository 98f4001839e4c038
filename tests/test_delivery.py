"""Delivery: the acknowledgement of one input unit, settled by sink workers, awaited by the input."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest

from streamer.core.delivery import Delivery, DeliveryFailed, LoopEvent

pytestmark = pytest.mark.anyio


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
    assert "disk full" in str(raised.value)


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

