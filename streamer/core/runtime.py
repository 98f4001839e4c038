"""The running pipeline: inline processors, a router, one batching worker per sink.

::

    input task: submit(envelopes) -> processors (inline) -> router ==> [bounded buffer] -> sink worker
                      ^                                                                   |
                      '------------------ Delivery settled after the write --------------'

The only buffers are the bounded streams in front of the sinks; when one is
full, ``submit`` waits, and so does the input (backpressure). Draining: on
SIGTERM/SIGINT (or :meth:`Pipeline.stop`) ``context.stopping`` is set, inputs
stop accepting and return once their in-flight units are settled, then the sink
streams close and every worker writes what it holds. All of it must finish within
``runtime.shutdown_timeout``; a second signal cancels at once.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from streamer.core.components import Batch, BatchEncoder, Context, DeliverySpec, Input, Processor, Sink
from streamer.core.delivery import Delivery, DeliveryFailed, LoopEvent
from streamer.core.envelope import DeadLetter, DeadLetterInfo, Envelope, utc_now
from streamer.core.errors import BatchError, is_retryable
from streamer.core.registry import SchemaResolver

if TYPE_CHECKING:
    from streamer.core.checkpoint import Ticket

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "Pipeline", "SinkWorker", "retry_delay"]

log = logging.getLogger("streamer")

EXIT_OK = 0
EXIT_TIMEOUT = 1
EXIT_INTERRUPTED = 130

Item = tuple[list[Envelope], "Delivery | None", "DeadLetterInfo | None"]
"""One unit's envelopes for one sink, the delivery they owe (required copies only), and, for items
sent to a dead-letter sink, why they are there."""

_OVERFLOW_LOG_INTERVAL = 10.0


async def _receive_before(receive: MemoryObjectReceiveStream[Item], deadline: float) -> Item | None:
    """The next item if one arrives before ``deadline``, else ``None``."""
    remaining = deadline - anyio.current_time()
    if remaining <= 0:
        return None
    with anyio.move_on_after(remaining):
        return await receive.receive()
    return None


def retry_delay(settings: DeliverySpec, retry: int, draw: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...): exponential with "equal jitter".

    The ceiling doubles from ``retry_backoff`` up to ``retry_max_backoff``; the wait is drawn between
    half the ceiling and the ceiling, so writers that failed together do not retry together.
    """
    ceiling = min(settings.retry_backoff * 2 ** (retry - 1), settings.retry_max_backoff)
    return draw(ceiling / 2, ceiling)


class _Entry:
    """Where one item sits in a batch: envelopes ``[start, end)``, the delivery it owes, its dead-letter info."""

    __slots__ = ("delivery", "end", "info", "start")

    def __init__(self, start: int, end: int, delivery: Delivery | None, info: DeadLetterInfo | None) -> None:
        self.start = start
        self.end = end
        self.delivery = delivery
        self.info = info


class SinkWorker:
    """Feeds one sink: gathers units into batches, writes, retries, settles deliveries.

    What it cannot write goes to its dead-letter worker when it has one (``dead_letter``), carrying the
    deliveries with it: the dead-letter worker settles them once it has written the events, so a required
    sink's unit is acknowledged when its events are durably somewhere. Without one, a required sink's
    failure fails the units (HTTP 500, no commit) and a best-effort sink's is counted as dropped.
    """

    def __init__(self, sink: Sink, route: str, delivery: DeliverySpec) -> None:
        self.sink = sink
        self.name = sink.name
        self.route = route
        self.required = delivery.required
        self.settings = delivery
        self.when_full = delivery.when_full
        send, receive = anyio.create_memory_object_stream[Item](delivery.buffer)
        self.send_stream: MemoryObjectSendStream[Item] = send
        self._receive: MemoryObjectReceiveStream[Item] = receive
        self._encoder = BatchEncoder(sink.encoding)
        self._dead_letter_encoder = msgspec.json.Encoder()
        self.dead_letter: SinkWorker | None = None
        """Set by :meth:`use_dead_letter`."""
        self._to_dead_letter: MemoryObjectSendStream[Item] | None = None
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.dead_lettered = 0
        """Events sent to the dead-letter sink (failed or overflow)."""
        self.overflowed = 0
        """Events that found the buffer full (``when_full`` other than ``block``)."""
        self._overflow_since_log = 0
        self._overflow_logged_at = -_OVERFLOW_LOG_INTERVAL

    def use_dead_letter(self, worker: SinkWorker) -> None:
        """Send what this sink gives up on to ``worker``. Its own handle on ``worker``'s buffer, closed
        when this worker ends, keeps the dead-letter worker running until every sink feeding it is done."""
        self.dead_letter = worker
        self._to_dead_letter = worker.send_stream.clone()

    def close(self) -> None:
        """Close both ends of the buffer (idempotent); what is still queued is not written."""
        self.send_stream.close()
        self._receive.close()
        if self._to_dead_letter is not None:
            self._to_dead_letter.close()

    def overflow(self, envelopes: list[Envelope]) -> Awaitable[None] | None:
        """The router found this best-effort sink's buffer full: apply ``when_full`` to one unit's part.

        Returns ``None`` when done at once, else an awaitable (the dead-letter buffer is full too: the
        input waits there, backpressure rather than loss).
        """
        self.overflowed += len(envelopes)
        self._overflow_since_log += len(envelopes)
        now = time.monotonic()
        if now - self._overflow_logged_at >= _OVERFLOW_LOG_INTERVAL:
            log.warning(
                "sink buffer full, %s overflow sink=%s events=%d (since the last report)",
                "sending to dead letters" if self.when_full == "dead_letter" else "dropping",
                self.name, self._overflow_since_log,
            )
            self._overflow_logged_at = now
            self._overflow_since_log = 0
        if self.when_full == "drop" or self.dead_letter is None:
            self.dropped += len(envelopes)
            return None
        info = DeadLetterInfo(sink=self.name, reason="overflow", time=utc_now())
        self.dead_lettered += len(envelopes)
        try:
            self.dead_letter.send_stream.send_nowait((envelopes, None, info))
        except anyio.WouldBlock:
            return self.dead_letter.send_stream.send((envelopes, None, info))
        return None

    async def run(self) -> None:
        """Write batches until the send side is closed and everything received is written.

        A batch is what is waiting when the worker gets to it, topped up for ``linger`` seconds (when
        it is not 0) until ``batch_size`` or ``batch_bytes``. Under load units pile up while the
        previous batch is written, so batches grow with the load without any waiting. With
        ``max_in_flight`` above 1, up to that many batches are written at once.
        """
        try:
            if self.settings.max_in_flight > 1:
                limiter = anyio.Semaphore(self.settings.max_in_flight)
                async with anyio.create_task_group() as writes:
                    while (taken := await self._next_batch()) is not None:
                        batch, entries, closed = taken
                        await limiter.acquire()
                        writes.start_soon(self._write_releasing, limiter, batch, entries)
                        if closed:
                            break
            else:
                while (taken := await self._next_batch()) is not None:
                    batch, entries, closed = taken
                    await self._write(batch, entries)
                    if closed:
                        break
        finally:
            self._receive.close()
            if self._to_dead_letter is not None:
                # Every batch of this sink is settled: the dead-letter worker may end once its other feeders have.
                self._to_dead_letter.close()

    async def _write_releasing(self, limiter: anyio.Semaphore, batch: Batch, entries: list[_Entry]) -> None:
        try:
            await self._write(batch, entries)
        finally:
            limiter.release()

    async def _next_batch(self) -> tuple[Batch, list[_Entry], bool] | None:
        """The next batch, its entries, and whether the stream ended after it; ``None`` once it has."""
        receive = self._receive
        settings = self.settings
        linger = settings.linger
        batch_size = settings.batch_size
        batch_bytes = settings.batch_bytes
        batch = Batch()
        entries: list[_Entry] = []
        try:
            # Only wait (a checkpoint, an event) when nothing is queued: after a write that did
            # not yield (a buffered file write), units that arrived meanwhile are taken at once.
            item = receive.receive_nowait()
        except anyio.WouldBlock:
            try:
                item = await receive.receive()
            except anyio.EndOfStream:
                return None
        except anyio.EndOfStream:
            return None
        self._add(batch, entries, item)
        closed = False
        deadline = anyio.current_time() + linger if linger > 0 else 0.0
        while len(batch.envelopes) < batch_size and batch.nbytes < batch_bytes:
            try:
                item = receive.receive_nowait()
            except anyio.WouldBlock:
                if linger <= 0:
                    break
                try:
                    waited = await _receive_before(receive, deadline)
                except anyio.EndOfStream:
                    closed = True
                    break
                if waited is None:
                    break
                item = waited
            except anyio.EndOfStream:
                closed = True
                break
            self._add(batch, entries, item)
        return batch, entries, closed

    def _add(self, batch: Batch, entries: list[_Entry], item: Item) -> None:
        envelopes, delivery, info = item
        start = len(batch.envelopes)
        if info is None:
            self._encoder.add(batch, envelopes)
        else:
            self._add_dead_letters(batch, envelopes, info)
        entries.append(_Entry(start, start + len(envelopes), delivery, info))

    def _add_dead_letters(self, batch: Batch, envelopes: list[Envelope], info: DeadLetterInfo) -> None:
        """Dead letters are written wrapped (:class:`DeadLetter`): the envelope and why it is here."""
        if self._encoder.encoding == "json_lines":
            encode_into = self._dead_letter_encoder.encode_into
            data = batch.data
            for envelope in envelopes:
                encode_into(DeadLetter(dead_letter=info, envelope=envelope), data, -1)
                data.append(10)
                batch.ends.append(len(data))
        batch.envelopes.extend(envelopes)

    async def _write(self, batch: Batch, entries: list[_Entry]) -> None:
        """Write ``batch`` with retries; settle what was written and pass on or fail what was not."""
        pending = batch
        where = list(range(len(batch)))  # the index in ``batch`` of each envelope of ``pending``
        failed: list[int] = []
        attempt = 0
        error: BaseException | None = None
        while True:
            attempt += 1
            try:
                await self.sink.write(pending)
            except Exception as exc:
                error = exc
                if isinstance(exc, BatchError):
                    # The others are durable: only the records named go on.
                    where = [where[i] for i in exc.failed if 0 <= i < len(where)]
                    if not where:
                        break
                if is_retryable(exc) and attempt <= self.settings.retries:
                    log.warning(
                        "sink write failed, retrying sink=%s attempt=%d events=%d error=%r",
                        self.name, attempt, len(where), exc,
                    )
                    await anyio.sleep(retry_delay(self.settings, attempt))
                    if len(where) != len(pending):
                        pending = batch.select(where)
                    continue
                failed = where
            break
        self.written += len(batch) - len(failed)
        if not failed:
            for entry in entries:
                if entry.delivery is not None:
                    entry.delivery.settle()
            return
        await self._give_up(batch, entries, failed, error, attempt)

    async def _give_up(
        self, batch: Batch, entries: list[_Entry], failed: list[int], error: BaseException | None, attempts: int
    ) -> None:
        """Pass the events at ``failed`` to the dead-letter sink, or fail their units; settle the rest."""
        failed_set = set(failed)
        dead_letter = self._to_dead_letter
        info = DeadLetterInfo(sink=self.name, reason="failed", error=repr(error), attempts=attempts, time=utc_now())
        log.error(
            "sink write failed, giving up on events sink=%s required=%s events=%d attempts=%d %s error=%r",
            self.name, self.required, len(failed), attempts,
            f"dead_letter={self.dead_letter.name}" if self.dead_letter is not None else "dead_letter=none",
            error,
        )
        envelopes = batch.envelopes
        for entry in entries:
            part = [envelopes[i] for i in range(entry.start, entry.end) if i in failed_set]
            if not part:
                if entry.delivery is not None:
                    entry.delivery.settle()
                continue
            if dead_letter is not None:
                # The delivery travels with its events: the dead-letter worker settles or fails it.
                await dead_letter.send((part, entry.delivery, entry.info or info))
            elif entry.delivery is not None:
                entry.delivery.fail(DeliveryFailed(self.name, error or RuntimeError("write failed")))
        if dead_letter is not None:
            self.dead_lettered += len(failed)
        elif self.required:
            self.failed += len(failed)
        else:
            self.dropped += len(failed)


class _Submit:
    """What the pipeline's inputs get as ``submit`` (see :class:`~streamer.core.components.Submit`)."""

    __slots__ = ("_submit", "nowait")

    def __init__(self, pipeline: Pipeline) -> None:
        self.nowait = pipeline.submit_nowait
        self._submit = pipeline.submit

    def __call__(self, envelopes: list[Envelope], ticket: Ticket[Any] | None = None) -> Awaitable[Delivery]:
        return self._submit(envelopes, ticket)


class Pipeline:
    """A compiled pipeline, ready to run on the current anyio backend."""

    def __init__(
        self,
        *,
        name: str,
        context: Context,
        resolver: SchemaResolver,
        inputs: list[Input],
        processors: list[Processor],
        workers: list[SinkWorker],
        shutdown_timeout: float,
        drain_delay: float = 0.0,
    ) -> None:
        self.name = name
        self.context = context
        self.resolver = resolver
        self.inputs = inputs
        self.processors = processors
        self.workers = workers
        self.shutdown_timeout = shutdown_timeout
        self.drain_delay = drain_delay
        self._valid = [w for w in workers if w.route == "valid"]
        self._invalid = [w for w in workers if w.route == "invalid"]
        self._all = [w for w in workers if w.route == "all"]
        self._when_valid = self._valid + self._all
        self._required_when_valid = sum(1 for w in self._when_valid if w.required)
        self._scope: anyio.CancelScope | None = None
        self.exit_code = EXIT_OK
        # The running backend's event class, found once in run(): anyio.Event() looks the backend up
        # on every call (~3 us per unit).
        self._new_event: Callable[[], anyio.Event | LoopEvent] = anyio.Event

    async def submit(self, envelopes: list[Envelope], ticket: Ticket[Any] | None = None) -> Delivery:
        """Process one input unit inline and hand it to the sinks; waits while sink buffers are full."""
        result = self.submit_nowait(envelopes, ticket)
        return result if isinstance(result, Delivery) else await result

    def submit_nowait(
        self, envelopes: list[Envelope], ticket: Ticket[Any] | None = None
    ) -> Delivery | Awaitable[Delivery]:
        """:meth:`submit` without waiting: the delivery, or an awaitable finishing the job (see ``Submit``)."""
        for index, processor in enumerate(self.processors):
            processed = processor.process_nowait(envelopes)
            if processed is None:
                return self._submit_from(index, envelopes, ticket)
            envelopes = processed
        return self._route(envelopes, ticket)

    def _route(self, envelopes: list[Envelope], ticket: Ticket[Any] | None = None) -> Delivery | Awaitable[Delivery]:
        """Hand processed envelopes to the sinks' buffers: the delivery, or an awaitable while one is full."""
        delivery = Delivery(self._new_event, ticket)
        if not envelopes:
            delivery.owe(0)
            return delivery
        copies: list[tuple[SinkWorker, list[Envelope]]]
        for envelope in envelopes:
            if not envelope.valid:
                copies = self._split(envelopes)
                required = sum(1 for w, _ in copies if w.required)
                break
        else:  # every event valid, the usual case: the sinks and the required count are known
            copies = [(w, envelopes) for w in self._when_valid]
            required = self._required_when_valid
        # Count every required copy before sending any, so an early settle cannot finish the unit.
        delivery.owe(required)
        for index, (worker, part) in enumerate(copies):
            try:
                # No checkpoint while there is room (anyio's send() yields to the loop first, ~5 us per
                # request); the caller's next step, waiting on the delivery, yields anyway.
                worker.send_stream.send_nowait((part, delivery if worker.required else None, None))
            except anyio.WouldBlock:
                if worker.when_full == "block":
                    return self._send_rest(copies[index:], delivery)  # a buffer is full: wait (backpressure)
                waiting = worker.overflow(part)  # a best-effort shadow sink must not slow the others
                if waiting is not None:
                    return self._send_rest(copies[index + 1 :], delivery, waiting)
        return delivery

    async def _submit_from(self, first: int, envelopes: list[Envelope], ticket: Ticket[Any] | None) -> Delivery:
        """The rest of :meth:`submit_nowait` once processor ``first`` has to wait."""
        for processor in self.processors[first:]:
            envelopes = await processor.process(envelopes)
        routed = self._route(envelopes, ticket)
        return routed if isinstance(routed, Delivery) else await routed

    async def _send_rest(
        self,
        copies: list[tuple[SinkWorker, list[Envelope]]],
        delivery: Delivery,
        waiting: Awaitable[None] | None = None,
    ) -> Delivery:
        if waiting is not None:
            await waiting
        for worker, part in copies:
            item = (part, delivery if worker.required else None, None)
            if worker.when_full == "block":
                await worker.send_stream.send(item)
                continue
            try:
                worker.send_stream.send_nowait(item)
            except anyio.WouldBlock:
                overflowing = worker.overflow(part)
                if overflowing is not None:
                    await overflowing
        return delivery

    def _split(self, envelopes: list[Envelope]) -> list[tuple[SinkWorker, list[Envelope]]]:
        """``(sink, its part)`` for a unit holding invalid events."""
        valid = [e for e in envelopes if e.valid]
        invalid = [e for e in envelopes if not e.valid]
        copies: list[tuple[SinkWorker, list[Envelope]]] = []
        if valid:
            copies.extend((w, valid) for w in self._valid)
        if invalid:
            copies.extend((w, invalid) for w in self._invalid)
        copies.extend((w, envelopes) for w in self._all)
        return copies

    async def drain(self) -> None:
        """Report not-ready, keep serving for ``drain_delay``, then :meth:`stop`."""
        if self.context.draining.is_set():
            return
        self.context.draining.set()
        if self.drain_delay > 0 and not self.context.stopping.is_set():
            log.info("not ready, serving for drain_delay=%ss before draining pipeline=%s", self.drain_delay, self.name)
            with anyio.move_on_after(self.drain_delay):
                await self.context.stopping.wait()
        self.stop()

    def stop(self) -> None:
        """Begin draining: inputs stop accepting; the whole drain must fit in ``shutdown_timeout``."""
        if self.context.stopping.is_set():
            return
        log.info("draining pipeline=%s timeout=%ss", self.name, self.shutdown_timeout)
        self.context.draining.set()
        self.context.stopping.set()
        if self._scope is not None:
            self._scope.deadline = min(self._scope.deadline, anyio.current_time() + self.shutdown_timeout)

    def kill(self) -> None:
        """Stop at once, without draining."""
        self.exit_code = EXIT_INTERRUPTED
        self.context.stopping.set()
        if self._scope is not None:
            self._scope.cancel()

    async def _watch_signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async with anyio.create_task_group() as tg:
                async for signum in signals:
                    if self.context.draining.is_set():
                        log.warning(
                            "second signal, exiting without draining signal=%s", signal.Signals(signum).name
                        )
                        self.kill()
                        return
                    log.info("signal received signal=%s", signal.Signals(signum).name)
                    tg.start_soon(self.drain)

    async def run(
        self, *, handle_signals: bool = False, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> int:
        """Open sinks, run inputs until they end or a stop, drain, close; return the exit code."""
        self._new_event = LoopEvent if self.context.backend == "asyncio" else type(anyio.Event())
        opened: list[Sink] = []
        try:
            await self.resolver.open()
            for worker in self.workers:
                await worker.sink.open()
                opened.append(worker.sink)
            self.context.ready.set()
            with anyio.CancelScope() as scope:
                self._scope = scope
                async with anyio.create_task_group() as watchers:
                    if handle_signals:
                        await watchers.start(self._watch_signals)
                    async with anyio.create_task_group() as sink_tasks:
                        for worker in self.workers:
                            sink_tasks.start_soon(worker.run)
                        async with anyio.create_task_group() as input_tasks:
                            for pipeline_input in self.inputs:
                                await input_tasks.start(pipeline_input.run, _Submit(self))
                            log.info(
                                "pipeline started pipeline=%s backend=%s inputs=%s sinks=%s",
                                self.name, self.context.backend,
                                ",".join(i.name for i in self.inputs), ",".join(w.name for w in self.workers),
                            )
                            task_status.started()
                        # Every input has returned: nothing more will be submitted.
                        self.context.stopping.set()
                        for worker in self.workers:
                            await worker.send_stream.aclose()
                    watchers.cancel_scope.cancel()
            if scope.cancelled_caught and self.exit_code == EXIT_OK:
                self.exit_code = EXIT_TIMEOUT
                log.error("shutdown timed out pipeline=%s; in-flight events may be unwritten", self.name)
        finally:
            self.context.ready = anyio.Event()
            for worker in self.workers:
                worker.close()  # already closed unless a kill or a failed start cut the run short
            with anyio.CancelScope(shield=True):
                for sink in opened:
                    try:
                        await sink.aclose()
                    except Exception as exc:
                        log.error("sink close failed sink=%s error=%r", sink.name, exc)
                await self.resolver.aclose()
        log.info(
            "pipeline stopped pipeline=%s exit=%d %s",
            self.name, self.exit_code,
            " ".join(f"{w.name}.written={w.written}" for w in self.workers),
        )
        return self.exit_code

    def statistics(self) -> dict[str, Any]:
        return {
            w.name: {
                "written": w.written,
                "failed": w.failed,
                "dropped": w.dropped,
                "dead_lettered": w.dead_lettered,
                "overflowed": w.overflowed,
                "buffered": w.send_stream.statistics().current_buffer_used,
            }
            for w in self.workers
        }


