"""Ordered checkpoints: never past an unsettled unit, everything once all settle, a bounded window.

The property tests settle units in random orders, with failures and retries, against a model: the
checkpoint is the last unit of the longest run of resolved units from the first one read.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.checkpoint import Checkpointer, Ticket
from streamer.core.components import Context
from streamer.core.delivery import Delivery, DeliveryFailed
from streamer.core.envelope import Envelope
from streamer.inputs.file import FileInput, FileInputSpec, _LineReader

T = TypeVar("T")


class CountingDeque(deque[T]):
    """Counts the slot operations the checkpointer does, to check its cost without timing it."""

    ops = 0

    def __getitem__(self, index: Any) -> Any:
        self.ops += 1
        return super().__getitem__(index)

    def popleft(self) -> T:
        self.ops += 1
        return super().popleft()

    def append(self, item: T) -> None:
        self.ops += 1
        super().append(item)

    def __iter__(self) -> Iterator[T]:
        for item in super().__iter__():
            self.ops += 1
            yield item

    def __contains__(self, item: object) -> bool:
        self.ops += len(self)
        return super().__contains__(item)

    def remove(self, item: T) -> None:
        self.ops += len(self)
        super().remove(item)


def counted(checkpointer: Checkpointer[Any]) -> CountingDeque[Any]:
    slots: CountingDeque[Any] = CountingDeque()
    checkpointer._slots = slots
    return slots


def expected_highest(positions: list[int], tickets: list[Ticket[int]]) -> tuple[int | None, int]:
    """The model: the position of the last unit of the resolved run from the start, and that run's length."""
    run = 0
    while run < len(tickets) and tickets[run].resolved:
        run += 1
    return (positions[run - 1] if run else None), run


# -- the structure alone -------------------------------------------------------------------------------


def test_in_order_and_out_of_order_resolution() -> None:
    checkpoint = Checkpointer[int](8)
    assert checkpoint.highest is None and checkpoint.take() is None
    a, b, c = (checkpoint.track_nowait(p) for p in (10, 20, 30))
    c.resolve()
    b.resolve()
    assert checkpoint.highest is None and checkpoint.take() is None and checkpoint.in_flight == 3
    a.resolve()
    assert checkpoint.highest == 30 and checkpoint.in_flight == 0
    assert checkpoint.take() == 30
    assert checkpoint.take() is None  # nothing new since
    d = checkpoint.track_nowait(40)
    d.resolve()
    d.resolve()  # idempotent
    assert checkpoint.take() == 40


def test_positions_are_opaque_and_start_from_committed() -> None:
    checkpoint = Checkpointer[str](2, committed="token-0")
    assert checkpoint.highest == "token-0" and checkpoint.take() is None
    first = checkpoint.track_nowait("token-b")
    second = checkpoint.track_nowait("token-a")  # never compared: read order is what counts
    second.resolve()
    first.resolve()
    assert checkpoint.take() == "token-a"


def test_the_window_counts_resolved_units_behind_an_unresolved_one() -> None:
    checkpoint = Checkpointer[int](2)
    first = checkpoint.track_nowait(1)
    checkpoint.track_nowait(2).resolve()
    with pytest.raises(anyio.WouldBlock):
        checkpoint.track_nowait(3)
    first.resolve()
    assert checkpoint.highest == 2
    checkpoint.track_nowait(3)


def test_a_failed_unit_holds_the_checkpoint_until_it_is_retried() -> None:
    checkpoint = Checkpointer[int](4)
    first, second, third = (checkpoint.track_nowait(p) for p in (1, 2, 3))
    first.resolve()
    error = DeliveryFailed("s3", OSError("down"))
    second.fail(error)
    second.fail(DeliveryFailed("s3", OSError("again")))  # the first error stays
    third.resolve()
    assert checkpoint.highest == 1
    assert checkpoint.failure is error and checkpoint.failed == [second] and second.error is error
    with pytest.raises(DeliveryFailed) as raised:
        checkpoint.track_nowait(4)
    assert raised.value is error
    second.resolve()  # the input retried the unit and the retry was written
    assert checkpoint.highest == 3 and checkpoint.failure is None and checkpoint.failed == []
    assert second.error is None
    third.fail(error)  # a resolved unit stays resolved: its position may be committed already
    assert checkpoint.failure is None and third.resolved


def test_failure_is_the_oldest_failure_still_standing() -> None:
    checkpoint = Checkpointer[int](4)
    first, second = checkpoint.track_nowait(1), checkpoint.track_nowait(2)
    one, two = ValueError("one"), ValueError("two")
    second.fail(one)
    first.fail(two)
    assert checkpoint.failure is one
    second.resolve()
    assert checkpoint.failure is two and checkpoint.highest is None


def test_settle_follows_the_delivery() -> None:
    checkpoint = Checkpointer[int](4)
    good, bad = checkpoint.track_nowait(1), checkpoint.track_nowait(2)
    delivery = Delivery()
    delivery.owe(2)
    delivery.on_done(good.settle)
    delivery.settle()
    assert not good.resolved
    delivery.settle()
    assert good.resolved
    failing = Delivery()
    failing.owe(1)
    failing.on_done(bad.settle)
    failing.fail(DeliveryFailed("db", RuntimeError("no")))
    assert bad.failed and checkpoint.highest == 1
    assert checkpoint.failure is failing.failure


def test_max_in_flight_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Checkpointer[int](0)


@settings(max_examples=300, deadline=None)
@given(
    positions=st.lists(st.integers(), unique=True, max_size=60),
    window=st.integers(min_value=1, max_value=8),
    data=st.data(),
)
def test_random_settle_orders(positions: list[int], window: int, data: st.DataObject) -> None:
    """Random interleavings of reads, resolves, failures and retries, checked against the model at each step."""
    checkpoint = Checkpointer[int](window)
    slots = counted(checkpoint)
    tickets: list[Ticket[int]] = []
    failed: list[Ticket[int]] = []  # in the order they failed
    settles = 0
    while True:
        highest, run = expected_highest(positions, tickets)
        # Never past an unsettled or failed unit, never short of a resolved run.
        assert checkpoint.highest == highest
        assert checkpoint.in_flight == len(tickets) - run <= window
        assert checkpoint.failed == failed
        unsettled = [t for t in tickets[run:] if not t.resolved]
        can_read = len(tickets) < len(positions)
        if not can_read and not unsettled:
            break
        actions = (["read"] if can_read else []) + (["resolve", "fail"] if unsettled else [])
        action = data.draw(st.sampled_from(actions))
        if action == "read":
            position = positions[len(tickets)]
            if failed:
                with pytest.raises(ValueError):
                    checkpoint.track_nowait(position)
            elif len(tickets) - run == window:
                with pytest.raises(anyio.WouldBlock):
                    checkpoint.track_nowait(position)
            else:
                tickets.append(checkpoint.track_nowait(position))
        elif action == "resolve":  # a pending unit written, or a failed one retried
            ticket = data.draw(st.sampled_from(unsettled))
            if ticket.failed:
                failed.remove(ticket)
            ticket.resolve()
            settles += 1
        else:
            pending = [t for t in unsettled if not t.failed]
            if pending:
                ticket = data.draw(st.sampled_from(pending))
                ticket.fail(ValueError("not written"))
                failed.append(ticket)
                settles += 1
    # Everything once all settle.
    assert checkpoint.highest == (positions[-1] if positions else None)
    assert checkpoint.take() == (positions[-1] if positions else None)
    assert checkpoint.in_flight == 0 and checkpoint.failure is None
    # O(1) amortised: each unit is appended and popped once; each settle peeks at the head a bounded number
    # of times beyond the units it pops.
    assert slots.ops <= 3 * len(positions) + 2 * settles


# -- waiting ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_track_waits_for_room_and_the_head_frees_it() -> None:
    checkpoint = Checkpointer[int](2)
    first, second = await checkpoint.track(1), await checkpoint.track(2)
    got: list[Ticket[int]] = []
    async with anyio.create_task_group() as tg:

        async def reader() -> None:
            got.append(await checkpoint.track(3))

        tg.start_soon(reader)
        await anyio.wait_all_tasks_blocked()
        second.resolve()  # not the head: no room yet
        await anyio.wait_all_tasks_blocked()
        assert got == []
        first.resolve()
    assert [t.position for t in got] == [3]
    assert checkpoint.highest == 2 and checkpoint._event is None


@pytest.mark.anyio
async def test_waiters_raise_a_failure_at_once() -> None:
    checkpoint = Checkpointer[int](1)
    ticket = await checkpoint.track(1)
    error = DeliveryFailed("s", OSError("x"))
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def reader() -> None:
                with pytest.raises(DeliveryFailed):
                    await checkpoint.track(2)

            async def drainer() -> None:
                with pytest.raises(DeliveryFailed):
                    await checkpoint.wait_settled()

            tg.start_soon(reader)
            tg.start_soon(drainer)
            await anyio.wait_all_tasks_blocked()
            ticket.fail(error)
    ticket.resolve()  # retried
    await checkpoint.wait_settled()
    assert checkpoint.highest == 1


@pytest.mark.anyio
async def test_a_cancelled_wait_tracks_nothing() -> None:
    checkpoint = Checkpointer[int](1)
    first = await checkpoint.track(1)
    with anyio.move_on_after(0.01):
        await checkpoint.track(2)
    assert checkpoint.in_flight == 1
    first.resolve()
    await checkpoint.track(3)
    assert checkpoint.in_flight == 1 and checkpoint.highest == 1


@pytest.mark.anyio
async def test_wait_settled_is_a_checkpoint_when_nothing_is_in_flight() -> None:
    checkpoint = Checkpointer[int](1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await checkpoint.wait_settled()
        pytest.fail("not a checkpoint")  # pragma: no cover


def run_concurrently(backend: str, positions: list[int], window: int, seed: int, failures: bool) -> None:
    """A reader tracking every position (waiting when the window is full) and a settler resolving, failing
    and retrying units at random, in two tasks; the model is checked at every step of the settler."""

    async def main() -> None:
        rng = random.Random(seed)
        checkpoint = Checkpointer[int](window)
        tickets: list[Ticket[int]] = []
        done_reading = anyio.Event()

        async def reader() -> None:
            for position in positions:
                while True:
                    try:
                        tickets.append(await checkpoint.track(position))
                        break
                    except ValueError:
                        # The input's choice: retry the failed units (here, they are written at once).
                        for ticket in checkpoint.failed:
                            ticket.resolve()
                assert checkpoint.in_flight <= window
            done_reading.set()

        async def settler() -> None:
            while True:
                highest, run = expected_highest(positions, tickets)
                assert checkpoint.highest == highest
                assert checkpoint.in_flight == len(tickets) - run <= window
                unsettled = [t for t in tickets[run:] if not t.resolved]
                if done_reading.is_set() and not unsettled:
                    return
                if unsettled and rng.random() < 0.7:
                    ticket = rng.choice(unsettled)
                    if failures and not ticket.failed and rng.random() < 0.2:
                        ticket.fail(ValueError("not written"))
                    else:
                        ticket.resolve()
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                tg.start_soon(settler)
            await checkpoint.wait_settled()
        assert checkpoint.highest == (positions[-1] if positions else None)
        assert len(tickets) == len(positions) and all(t.resolved for t in tickets)

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=40, deadline=None)
@given(
    positions=st.lists(st.integers(), unique=True, max_size=40),
    window=st.integers(min_value=1, max_value=6),
    seed=st.integers(),
    failures=st.booleans(),
)
def test_random_settle_orders_with_backpressure(
    backend: str, positions: list[int], window: int, seed: int, failures: bool
) -> None:
    run_concurrently(backend, positions, window, seed, failures)


# -- the file input on it ---------------------------------------------------------------------------------


class HeldSubmit:
    """A submit whose deliveries the test settles, in any order."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.units: list[list[Envelope]] = []
        self.submitted = anyio.Event()

    async def __call__(self, envelopes: list[Envelope], ticket: Ticket[Any] | None = None) -> Delivery:
        delivery = Delivery(ticket=ticket)
        delivery.owe(1)
        self.deliveries.append(delivery)
        self.units.append(envelopes)
        self.submitted.set()
        self.submitted = anyio.Event()
        return delivery

    # pragma: no cover - not used by the file input
    def nowait(self, envelopes: list[Envelope], ticket: Ticket[Any] | None = None) -> Delivery:
        raise NotImplementedError


def file_input(path: Path, max_in_flight: int) -> FileInput:
    context = Context(pipeline="test", backend="asyncio", resolver=cast(Any, None), base_dir=path.parent)
    return FileInput("replay", FileInputSpec(path=path.name, max_in_flight=max_in_flight), context)


def test_line_reader_offset_is_the_end_of_the_last_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  {"b": 2}  \n{"c"')
    with open(path, "rb") as stream:
        reader = _LineReader(stream)
        assert reader.read() == [b'{"a": 1}', b'{"b": 2}']
        assert reader.offset == len(b'{"a": 1}\n\n  {"b": 2}  \n')
        assert reader.read() == [b'{"c"']
        assert reader.offset == path.stat().st_size
        assert reader.read() == []


@pytest.mark.anyio
async def test_file_input_keeps_max_in_flight_chunks_and_waits_for_them_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "in.jsonl"
    line = b'{"pad": "' + b"x" * 1000 + b'"}\n'
    path.write_bytes(line * 300)  # about 5 chunks of 64 KiB
    submit = HeldSubmit()
    finished = anyio.Event()

    async def run() -> None:
        with caplog.at_level(logging.INFO, logger="streamer"):
            await file_input(path, max_in_flight=2).run(submit)
        finished.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while len(submit.deliveries) < 2:
                await submit.submitted.wait()
            await anyio.sleep(0.05)  # room for a third read, which must wait
            assert len(submit.deliveries) == 2
            submit.deliveries[1].settle()  # out of order: the first still holds the window
            await anyio.sleep(0.05)
            assert len(submit.deliveries) == 2
            submit.deliveries[0].settle()
            await submit.submitted.wait()
            # Settle the rest newest first, as they come; the input returns only once all are settled.
            settled = 2
            while not finished.is_set():
                with anyio.move_on_after(0.05):
                    await submit.submitted.wait()
                outstanding = submit.deliveries[settled:]
                for delivery in reversed(outstanding):
                    delivery.settle()
                settled += len(outstanding)
                await anyio.lowlevel.checkpoint()
            assert all(delivery.done for delivery in submit.deliveries)
    assert len(submit.deliveries) >= 4
    assert sum(len(unit) for unit in submit.units) == 300
    assert f"lines=300 offset={path.stat().st_size}" in caplog.text


@pytest.mark.anyio
async def test_file_input_stops_on_a_failed_chunk(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes((b'{"pad": "' + b"x" * 1000 + b'"}\n') * 300)
    submit = HeldSubmit()
    error = DeliveryFailed("valid", OSError("disk full"))

    async def run() -> None:
        with pytest.raises(DeliveryFailed) as raised:
            await file_input(path, max_in_flight=2).run(submit)
        assert raised.value is error

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            while len(submit.deliveries) < 2:
                await submit.submitted.wait()
            submit.deliveries[1].settle()
            submit.deliveries[0].fail(error)


def test_a_delivery_settles_the_ticket_it_carries_before_waking_anyone() -> None:
    checkpoint = Checkpointer[int](max_in_flight=4)
    first, second = checkpoint.track_nowait(10), checkpoint.track_nowait(20)
    seen: list[int | None] = []
    ok = Delivery(ticket=first)
    ok.on_done(lambda _: seen.append(checkpoint.highest))
    ok.owe(2)
    ok.settle()
    assert checkpoint.highest is None  # one required copy still owed
    ok.settle()
    assert seen == [10] and first.resolved
    failed = Delivery(ticket=second)
    failed.owe(1)
    error = DeliveryFailed("store", OSError("down"))
    failed.fail(error)
    assert second.failed and second.error is error and checkpoint.highest == 10
