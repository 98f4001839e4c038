"""Acknowledgement: how an input learns that its data is safe.

One :class:`Delivery` stands for one unit an input answers for: an HTTP request
(however many events it carried), a Kafka record, a CDC transaction. The router
adds one pending copy per *required* sink that receives part of the unit; each
sink worker settles the delivery once after its batch is durably written, or
fails it. The input waits, then answers 200 / commits / advances, or 5xx /
does not commit.

Cost is O(1) per unit, never per event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from streamer.core.checkpoint import Ticket

__all__ = ["Delivery", "DeliveryFailed", "LoopEvent"]


class DeliveryFailed(Exception):
    """A required sink could not write part of the unit."""

    def __init__(self, sink: str, cause: BaseException) -> None:
        super().__init__(f"sink {sink!r} failed to write: {cause}")
        self.sink = sink
        self.cause = cause


class LoopEvent:
    """A one-shot event for asyncio made of a bare loop future: about 2 us less per wait than
    ``anyio.Event``, which wraps an ``asyncio.Event`` (a waiter deque and a future per wait).

    Same contract as ``anyio.Event`` for one waiter at a time: ``set`` is idempotent and wakes the
    waiter; a waiter that is cancelled leaves the event usable.
    """

    __slots__ = ("_future", "_set")

    def __init__(self) -> None:
        import asyncio

        self._future = asyncio.get_running_loop().create_future()
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        if not self._future.done():
            self._future.set_result(None)

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        if self._future.done():  # cancelled under an earlier waiter
            self._future = self._future.get_loop().create_future()
        await self._future


class Delivery:
    """Counts the copies still owed by required sinks for one input unit.

    The event a waiter sleeps on is made only when :meth:`wait` finds the unit unsettled. ``new_event``
    makes it: by default ``anyio.Event``; the pipeline passes :class:`LoopEvent` on asyncio and its
    backend's event class on trio, which skip anyio's backend lookup (~3 us per unit).
    """

    __slots__ = ("_callback", "_event", "_new_event", "done", "failure", "pending", "ticket")

    def __init__(
        self, new_event: Callable[[], anyio.Event | LoopEvent] = anyio.Event, ticket: Ticket[Any] | None = None
    ) -> None:
        self.pending = 0
        self.ticket = ticket
        """The unit's place in its input's ordered checkpoint (change inputs), settled with the unit."""
        self.failure: DeliveryFailed | None = None
        self.done = False
        """Every required copy is written, or one failed."""
        self._event: anyio.Event | LoopEvent | None = None
        self._new_event = new_event
        self._callback: Callable[[Delivery], object] | None = None

    def owe(self, copies: int) -> None:
        """Called by the router with the number of required copies, before it sends any (so an early
        settle cannot finish the unit); a unit owing nothing is done at once."""
        self.pending += copies
        if self.pending == 0:
            self._finish()

    def settle(self) -> None:
        """One required copy is durably written."""
        self.pending -= 1
        if self.pending <= 0:
            self._finish()

    def fail(self, failure: DeliveryFailed) -> None:
        """A required copy was not written; the first failure wins."""
        if self.failure is None:
            self.failure = failure
        self._finish()

    def on_done(self, callback: Callable[[Delivery], object]) -> None:
        """Call ``callback(self)`` once, when the unit is done (at once if it is), instead of waiting.

        For inputs that answer from callbacks rather than tasks. It runs in the task that settles the
        unit (a sink worker), so it must be quick and must not raise.
        """
        if self.done:
            callback(self)
        else:
            self._callback = callback

    def _finish(self) -> None:
        self.done = True
        if self.ticket is not None:
            self.ticket.settle(self)  # before waking anyone: a woken input sees the checkpoint moved
        if self._event is not None:
            self._event.set()
        callback = self._callback
        if callback is not None:
            self._callback = None
            callback(self)

    async def wait(self) -> None:
        """Wait until every required copy is written; raise :class:`DeliveryFailed` if one was not.

        Always a checkpoint, like any anyio wait, even when the unit is already settled.
        """
        if self.done:
            await anyio.lowlevel.checkpoint()
        else:
            if self._event is None:
                self._event = self._new_event()
            await self._event.wait()
        if self.failure is not None:
            raise self.failure
