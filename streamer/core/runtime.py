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
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from streamer.core.components import Batch, Context, DeliverySpec, Input, Processor, Sink
from streamer.core.delivery import Delivery, DeliveryFailed, LoopEvent
from streamer.core.envelope import Envelope
from streamer.core.registry import SchemaResolver

__all__ = ["EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "Pipeline", "SinkWorker"]

log = logging.getLogger("streamer")

EXIT_OK = 0
EXIT_TIMEOUT = 1
EXIT_INTERRUPTED = 130

Item = tuple[list[Envelope], Delivery | None]

_MAX_BACKOFF = 30.0


async def _receive_before(receive: MemoryObjectReceiveStream[Item], deadline: float) -> Item | None:
    """The next item if one arrives before ``deadline``, else ``None``."""
    remaining = deadline - anyio.current_time()
    if remaining <= 0:
        return None
    with anyio.move_on_after(remaining):
        return await receive.receive()
    return None


class SinkWorker:
    """Feeds one sink: gathers units into batches, writes, retries, settles deliveries."""

    def __init__(self, sink: Sink, route: str, delivery: DeliverySpec) -> None:
        self.sink = sink
        self.name = sink.name
        self.route = route
        self.required = delivery.required
        self.settings = delivery
        send, receive = anyio.create_memory_object_stream[Item](delivery.buffer)
        self.send_stream: MemoryObjectSendStream[Item] = send
        self._receive: MemoryObjectReceiveStream[Item] = receive
        encoder = msgspec.json.Encoder()
        self._encode = encoder.encode
        # Straight into the batch's buffer: no bytes object, no growing copy per line.
        self._encode_into = encoder.encode_into
        self.written = 0
        self.failed = 0
        self.dropped = 0

    def close(self) -> None:
        """Close both ends of the buffer (idempotent); what is still queued is not written."""
        self.send_stream.close()
        self._receive.close()

    async def run(self) -> None:
        """Write batches until the send side is closed and everything received is written.

        A batch is what is waiting when the worker gets to it, topped up for ``linger`` seconds (when
        it is not 0) until ``batch_size`` or ``batch_bytes``. Under load units pile up while the
        previous batch is written, so batches grow with the load without any waiting.
        """
        receive = self._receive
        settings = self.settings
        linger = settings.linger
        batch_size = settings.batch_size
        batch_bytes = settings.batch_bytes
        add = self._add
        async with receive:
            while True:
                batch = Batch()
                deliveries: list[Delivery] = []
                try:
                    # Only wait (a checkpoint, an event) when nothing is queued: after a write that did
                    # not yield (a buffered file write), units that arrived meanwhile are taken at once.
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        return
                except anyio.EndOfStream:
                    return
                add(batch, deliveries, item)
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
                    add(batch, deliveries, item)
                await self._write(batch, deliveries)
                if closed:
                    return

    def _add(self, batch: Batch, deliveries: list[Delivery], item: Item) -> None:
        envelopes, delivery = item
        encode_into = self._encode_into
        data = batch.data
        ends = batch.ends
        if len(envelopes) == 1:
            encode_into(envelopes[0], data, -1)
            data.append(10)  # "\n"
            ends.append(len(data))
        else:
            # The envelopes of one unit usually share one Source (an HTTP request's, with its headers):
            # encode it once and splice it in as raw JSON, swapped in only for the (synchronous) encode
            # of each envelope.
            encode = self._encode
            source: Any = None
            raw: Any = None
            for envelope in envelopes:
                if envelope.source is not source:
                    source = envelope.source
                    raw = msgspec.Raw(encode(source))
                envelope.source = raw
                try:
                    encode_into(envelope, data, -1)
                finally:
                    envelope.source = source
                data.append(10)
                ends.append(len(data))
        batch.envelopes.extend(envelopes)
        if delivery is not None:
            deliveries.append(delivery)

    async def _write(self, batch: Batch, deliveries: list[Delivery]) -> None:
        backoff = self.settings.retry_backoff
        attempt = 0
        while True:
            try:
                await self.sink.write(batch)
            except Exception as exc:
                if attempt < self.settings.retries:
                    attempt += 1
                    log.warning(
                        "sink write failed, retrying sink=%s attempt=%d events=%d error=%r",
                        self.name, attempt, len(batch), exc,
                    )
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                if self.required:
                    self.failed += len(batch)
                    failure = DeliveryFailed(self.name, exc)
                    for delivery in deliveries:
                        delivery.fail(failure)
                else:
                    self.dropped += len(batch)
                log.error(
                    "sink write failed, giving up on batch sink=%s required=%s events=%d error=%r",
                    self.name, self.required, len(batch), exc,
                )
                return
            self.written += len(batch)
            for delivery in deliveries:
                delivery.settle()
            return


class _Submit:
    """What the pipeline's inputs get as ``submit`` (see :class:`~streamer.core.components.Submit`)."""

    __slots__ = ("_submit", "nowait")

    def __init__(self, pipeline: Pipeline) -> None:
        self.nowait = pipeline.submit_nowait
        self._submit = pipeline.submit

    def __call__(self, envelopes: list[Envelope]) -> Awaitable[Delivery]:
        return self._submit(envelopes)


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

    async def submit(self, envelopes: list[Envelope]) -> Delivery:
        """Process one input unit inline and hand it to the sinks; waits while sink buffers are full."""
        result = self.submit_nowait(envelopes)
        return result if isinstance(result, Delivery) else await result

    def submit_nowait(self, envelopes: list[Envelope]) -> Delivery | Awaitable[Delivery]:
        """:meth:`submit` without waiting: the delivery, or an awaitable finishing the job (see ``Submit``)."""
        for index, processor in enumerate(self.processors):
            processed = processor.process_nowait(envelopes)
            if processed is None:
                return self._submit_from(index, envelopes)
            envelopes = processed
        return self._route(envelopes)

    def _route(self, envelopes: list[Envelope]) -> Delivery | Awaitable[Delivery]:
        """Hand processed envelopes to the sinks' buffers: the delivery, or an awaitable while one is full."""
        delivery = Delivery(self._new_event)
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
                worker.send_stream.send_nowait((part, delivery if worker.required else None))
            except anyio.WouldBlock:
                return self._send_rest(copies[index:], delivery)  # a buffer is full: wait (backpressure)
        return delivery

    async def _submit_from(self, first: int, envelopes: list[Envelope]) -> Delivery:
        """The rest of :meth:`submit_nowait` once processor ``first`` has to wait."""
        for processor in self.processors[first:]:
            envelopes = await processor.process(envelopes)
        routed = self._route(envelopes)
        return routed if isinstance(routed, Delivery) else await routed

    async def _send_rest(self, copies: list[tuple[SinkWorker, list[Envelope]]], delivery: Delivery) -> Delivery:
        for worker, part in copies:
            await worker.send_stream.send((part, delivery if worker.required else None))
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
                "buffered": w.send_stream.statistics().current_buffer_used,
            }
            for w in self.workers
        }


