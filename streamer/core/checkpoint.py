"""Ordered checkpoints: how far a change input may commit when its units settle out of order.

A Kafka offset, a Postgres LSN or a Mongo resume token can only be committed in order: committing a
position says that everything before it is safe. Deliveries do not settle in that order (two sinks,
a valid and an invalid copy, batches, retries, a sink writing several batches at once), so an input
keeps one :class:`Checkpointer` per partition or stream: the units in flight in the order they were
read, and the highest position below which every unit is settled.

::

    checkpoint = Checkpointer[int](max_in_flight=1024)
    ...
    ticket = await checkpoint.track(record.offset + 1)  # waits while the window is full
    await submit(envelopes, ticket)  # the unit carries its position; settled with its delivery
    ...
    if (offset := checkpoint.take()) is not None:   # periodically
        await consumer.commit({partition: offset})

Costs: O(1) amortised per unit (a slot in a deque, popped once), memory bounded by the window, no task,
event or callback per unit; at most one event exists, made only when a task has to wait.

The structure is not thread-safe: use it from the event loop's thread (``Delivery.on_done`` callbacks
run there, in the sink worker's task).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from streamer.core.delivery import Delivery

__all__ = ["Checkpointer", "Ticket"]

P = TypeVar("P")

_PENDING = 0
_RESOLVED = 1
_FAILED = 2


class Ticket(Generic[P]):
    """One tracked unit: its position and the handle that settles it.

    Made by :meth:`Checkpointer.track`. Settle it exactly once with :meth:`resolve` or :meth:`fail`
    (or :meth:`settle` with the unit's delivery); a failed ticket may later be resolved, when the
    input retried the unit and the retry was written.
    """

    __slots__ = ("_checkpointer", "_state", "error", "position")

    def __init__(self, checkpointer: Checkpointer[P], position: P) -> None:
        self._checkpointer = checkpointer
        self._state = _PENDING
        self.position = position
        """What committing this unit means (an offset, an LSN, a resume token)."""
        self.error: BaseException | None = None
        """Why the unit failed, while it is failed."""

    @property
    def resolved(self) -> bool:
        return self._state == _RESOLVED

    @property
    def failed(self) -> bool:
        return self._state == _FAILED

    def resolve(self) -> None:
        """The unit is safe (every required sink wrote it): the checkpoint may pass it.

        Idempotent. Allowed after :meth:`fail` (a retry was written). Never raises, never waits: it is
        called from ``Delivery.on_done`` callbacks in sink workers.
        """
        state = self._state
        if state == _RESOLVED:
            return
        self._state = _RESOLVED
        checkpointer = self._checkpointer
        if state == _FAILED:
            self.error = None
            del checkpointer._failed[self]
        checkpointer._resolved(self)

    def fail(self, error: BaseException) -> None:
        """The unit was not written: the checkpoint stays below it until it is resolved.

        The input decides what to do: waiters (:meth:`Checkpointer.track`,
        :meth:`Checkpointer.wait_settled`) raise ``error`` so that it learns at once, instead of
        waiting for a unit that will not settle by itself. A resolved ticket ignores this (its position
        may already be committed); a failed one keeps its first error. Never raises, never waits.
        """
        if self._state != _PENDING:
            return
        self._state = _FAILED
        self.error = error
        checkpointer = self._checkpointer
        checkpointer._failed[self] = None
        checkpointer._wake()

    def settle(self, delivery: Delivery) -> None:
        """:meth:`resolve` or :meth:`fail` after the unit's delivery; a delivery made with this ticket
        (``submit(envelopes, ticket)``) calls it when it is done."""
        if delivery.failure is None:
            self.resolve()
        else:
            self.fail(delivery.failure)

    def __repr__(self) -> str:
        state = ("pending", "resolved", "failed")[self._state]
        return f"Ticket({self.position!r}, {state})"


class Checkpointer(Generic[P]):
    """The units of one partition or stream in read order, and how far they may be committed.

    :meth:`track` each unit in the order it was read, with the position that committing it means
    (positions are opaque: never compared, never ``None``). :attr:`highest` is the position of the
    last unit of the longest run of resolved units from the start: every unit read before it is
    resolved too. It never passes an unresolved or failed unit.

    ``max_in_flight`` is the window: how many units may be tracked past the checkpoint, resolved or
    not. A resolved unit behind an unresolved one still counts, so the window bounds what a crash
    redelivers and what this structure holds, not only what is unsettled. When the window is full,
    :meth:`track` waits (backpressure: the input stops reading) and :meth:`track_nowait` raises
    :exc:`anyio.WouldBlock`.

    ``committed`` is where the input starts from (the position it last committed), reported by
    :attr:`highest` until a unit passes it.
    """

    __slots__ = ("_advanced", "_event", "_failed", "_highest", "_slots", "max_in_flight")

    def __init__(self, max_in_flight: int, *, committed: P | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.max_in_flight = max_in_flight
        self._slots: deque[Ticket[P]] = deque()
        self._highest = committed
        self._advanced = False
        # Failed tickets in the order they failed: O(1) to add and remove, and `failure` is the oldest.
        self._failed: dict[Ticket[P], None] = {}
        # At most one event, shared by every waiter, made only when one has to wait, dropped once set.
        self._event: anyio.Event | None = None

    @property
    def highest(self) -> P | None:
        """The position below which (inclusive) every tracked unit is resolved; ``committed`` (by
        default ``None``) until the first unit is."""
        return self._highest

    def take(self) -> P | None:
        """:attr:`highest` if it moved since the last call (or since the start), else ``None``.

        For inputs that commit periodically: commit what this returns, skip the commit on ``None``.
        """
        if not self._advanced:
            return None
        self._advanced = False
        return self._highest

    @property
    def in_flight(self) -> int:
        """Units tracked past the checkpoint: ``0`` when every tracked unit is resolved."""
        return len(self._slots)

    @property
    def failed(self) -> list[Ticket[P]]:
        """The tickets failed and not resolved since, oldest failure first."""
        return list(self._failed)

    @property
    def failure(self) -> BaseException | None:
        """The error of the oldest failed ticket, or ``None`` when none is failed."""
        for ticket in self._failed:
            return ticket.error
        return None

    def track_nowait(self, position: P) -> Ticket[P]:
        """Track the next unit read, at ``position``, and return its ticket.

        Raises :attr:`failure` when a unit is failed (tracking more would only grow what must be
        redone), and :exc:`anyio.WouldBlock` when the window is full.
        """
        if self._failed:
            raise self._failure()
        slots = self._slots
        if len(slots) >= self.max_in_flight:
            raise anyio.WouldBlock
        ticket = Ticket(self, position)
        slots.append(ticket)
        return ticket

    async def track(self, position: P) -> Ticket[P]:
        """Track the next unit read, at ``position``, waiting while the window is full.

        Raises :attr:`failure` when a unit is failed, also one that fails while this waits. Like
        ``submit``, it is a checkpoint only when it waits: a yield per Kafka record would cost more
        than the rest of the bookkeeping. Cancelling the wait tracks nothing.
        """
        while True:
            if self._failed:
                raise self._failure()
            if len(self._slots) < self.max_in_flight:
                return self.track_nowait(position)
            await self._wait()

    async def wait_settled(self) -> None:
        """Wait until every tracked unit is resolved (:attr:`in_flight` is ``0``); always a checkpoint.

        Raises :attr:`failure` when a unit is failed, also one that fails while this waits.
        """
        if not self._slots:
            await anyio.lowlevel.checkpoint()
        while self._slots:
            if self._failed:
                raise self._failure()
            await self._wait()

    def _failure(self) -> BaseException:
        error = next(iter(self._failed)).error
        assert error is not None
        return error

    async def _wait(self) -> None:
        event = self._event
        if event is None:
            event = self._event = anyio.Event()
        await event.wait()

    def _wake(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    def _resolved(self, ticket: Ticket[P]) -> None:
        slots = self._slots
        # Only the oldest unit moves the checkpoint; a later one waits in its slot, marked resolved,
        # until the units before it are. Each slot is popped once: O(1) amortised per unit.
        if slots[0] is not ticket:
            return
        slots.popleft()
        while slots and slots[0]._state == _RESOLVED:
            ticket = slots.popleft()
        self._highest = ticket.position
        self._advanced = True
        self._wake()
