"""What a connector is: the base classes every input, processor and sink derives from.

A connector module declares a ``Spec`` struct (its config, tagged by ``type``),
the class that runs it, and the backends it supports. The spec structs stay
light: a module imports its client library inside the class, never at module
level, so that compiling a pipeline imports only what it uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus

from streamer.core.envelope import Envelope

if TYPE_CHECKING:
    from streamer.core.checkpoint import Ticket
    from streamer.core.delivery import Delivery
    from streamer.core.registry import SchemaResolver

__all__ = [
    "BOTH_BACKENDS",
    "Batch",
    "BatchEncoder",
    "Component",
    "Context",
    "DeliverySpec",
    "Encoding",
    "Input",
    "InputSpec",
    "Processor",
    "ProcessorSpec",
    "Sink",
    "SinkSpec",
    "Submit",
]

Encoding = Literal["json_lines", "none"]

BOTH_BACKENDS: frozenset[str] = frozenset({"asyncio", "trio"})
ASYNCIO_ONLY: frozenset[str] = frozenset({"asyncio"})

class Submit(Protocol):
    """How an input hands one unit to its pipeline.

    ``await submit(envelopes)`` runs the processors inline and routes the envelopes to the sinks'
    buffers, waiting while one is full (backpressure); it returns the unit's delivery.
    ``submit.nowait(envelopes)`` does the same without waiting when it can: it returns the delivery
    when every processor finished at once and every buffer had room, else an awaitable that finishes
    the job from the step that could not (await it to get the delivery). Inputs that answer from
    callbacks rather than tasks use it.

    A change input passes the unit's ``ticket`` from its :class:`~streamer.core.checkpoint.Checkpointer`:
    the unit carries its position, and the ticket is settled with the delivery (resolved when every
    required copy is written, failed otherwise) before anyone waiting on the delivery wakes.
    """

    def __call__(self, envelopes: list[Envelope], /, ticket: Ticket[Any] | None = None) -> Awaitable[Delivery]: ...

    def nowait(
        self, envelopes: list[Envelope], /, ticket: Ticket[Any] | None = None
    ) -> Delivery | Awaitable[Delivery]: ...


class Spec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    """Base of every connector config struct; ``type`` picks the connector."""


def spec_type(spec: msgspec.Struct) -> str:
    """The ``type`` a spec was written with (its struct tag)."""
    return str(type(spec).__struct_config__.tag)


class InputSpec(Spec):
    pass


class ProcessorSpec(Spec):
    pass


class DeliverySpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How a sink batches, retries and takes part in acknowledgement."""

    required: Annotated[
        bool,
        msgspec.Meta(
            description="When true the input is acknowledged only after this sink wrote the event; "
            "when false the sink is best-effort and its failures never fail a request."
        ),
    ] = True
    batch_size: Annotated[int, msgspec.Meta(ge=1, description="Write when this many events are waiting.")] = 500
    batch_bytes: Annotated[
        int, msgspec.Meta(ge=1, description="Write when the encoded events reach this many bytes.")
    ] = 1_048_576
    linger: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="Seconds to wait for more events when a batch is not full before writing it. "
            "0 (natural batching): write what is waiting; under load it is what arrived during the previous write.",
        ),
    ] = 0.0
    buffer: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Input units (requests, records) that may wait in front of this sink; "
            "when full, inputs wait (backpressure).",
        ),
    ] = 256
    retries: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="Attempts after the first failed write before giving up on a batch (errors the sink "
            "reports as fatal are not retried).",
        ),
    ] = 3
    retry_backoff: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds before the first retry; the wait doubles with each retry, up to "
            "`retry_max_backoff`, and each wait is drawn between half of it and all of it (jitter), so "
            "that many writers retrying at once spread out.",
        ),
    ] = 0.1
    retry_max_backoff: Annotated[
        float, msgspec.Meta(gt=0, description="Longest wait between two attempts, in seconds.")
    ] = 30.0
    max_in_flight: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="Batches this sink may be writing at once. 1 keeps batches in order; more overlap "
            "the round trips of a remote sink (Kafka, HTTP) and may reorder batches.",
        ),
    ] = 1
    dead_letter: Annotated[
        str | None,
        msgspec.Meta(
            description="Name of another sink of this pipeline that receives the events this sink gave up "
            "on (retries exhausted, a fatal error, or overflow with `when_full: dead_letter`), each wrapped "
            "with the sink, the error, the attempts and the time. For a required sink, a batch is "
            "acknowledged once its dead letters are written.",
            examples=["dead_letters"],
        ),
    ] = None
    when_full: Annotated[
        Literal["block", "dead_letter", "drop"],
        msgspec.Meta(
            description="What inputs do when this sink's buffer is full. `block`: wait for room "
            "(backpressure; the only choice for a required sink). For a best-effort sink, `dead_letter` sends "
            "the overflow to the dead-letter sink instead, so a slow or broken shadow sink never slows the "
            "required ones; `drop` discards it (counted and logged).",
        ),
    ] = "block"


class SinkSpec(Spec):
    route: Annotated[
        Literal["valid", "invalid", "all", "dead_letters"],
        msgspec.Meta(
            description="Which events this sink receives: `valid`, `invalid` or `all` of them, or "
            "`dead_letters`: only what the sinks naming it as their `delivery.dead_letter` give up on."
        ),
    ] = "valid"
    delivery: Annotated[DeliverySpec, msgspec.Meta(description="Batching, retries, acknowledgement.")] = (
        msgspec.field(default_factory=DeliverySpec)
    )


@dataclass
class Context:
    """What a running component may use from its pipeline."""

    pipeline: str
    backend: str
    resolver: SchemaResolver
    draining: anyio.Event = field(default_factory=anyio.Event)
    """Set on the first signal: readiness turns false; inputs still accept for ``drain_delay``."""
    stopping: anyio.Event = field(default_factory=anyio.Event)
    """Set when inputs must stop accepting and finish what is in flight."""
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Set when every sink is open; the HTTP ``/ready`` endpoint reports it."""
    base_dir: Path = field(default_factory=Path.cwd)
    extras: dict[str, Any] = field(default_factory=dict)


class Component:
    """Shared by all connectors: the spec type, the backends it runs on and the packages it needs.

    ``requires`` names the modules a connector imports at run time that are not streamer's own
    dependencies, and ``extra`` the ``streamer[...]`` extra that installs them: a pipeline using the
    connector while one is missing is refused by ``lint`` and ``run`` alike, before anything starts
    (``streamer.core.graph.check_pipeline``), rather than failing on first use.
    """

    Spec: ClassVar[type[msgspec.Struct]]
    backends: ClassVar[frozenset[str]] = BOTH_BACKENDS
    backend_reason: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None


class Input(Component, ABC):
    """Produces envelopes and answers for them.

    ``run`` calls ``submit`` for each unit, waits on the returned delivery and then
    acknowledges the unit to its producer. It returns when its data is exhausted,
    or when ``context.stopping`` is set and everything it accepted is settled.
    """

    def __init__(self, name: str, spec: Any, context: Context) -> None:
        self.name = name
        self.spec = spec
        self.context = context

    @abstractmethod
    async def run(self, submit: Submit, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None: ...


class Processor(Component, ABC):
    """A step run inline in the input's task, over the envelopes of one unit.

    It may change envelopes in place and may drop or add some. It awaits only
    for rare work (a schema cache miss), never per event.
    """

    def __init__(self, spec: Any, context: Context) -> None:
        self.spec = spec
        self.context = context

    @abstractmethod
    async def process(self, envelopes: list[Envelope]) -> list[Envelope]: ...

    def process_nowait(self, envelopes: list[Envelope]) -> list[Envelope] | None:
        """What :meth:`process` returns, when it can be had without waiting; else ``None``.

        ``None`` means that nothing was changed: the pipeline then awaits :meth:`process` instead.
        Processors that never wait implement both (``process`` returning this); the default never
        finishes at once.
        """
        return None


class Batch:
    """Envelopes a sink writes at once, encoded once, as JSON lines in one buffer.

    ``data`` is what a JSON-lines file or body holds: each envelope's JSON document followed by a
    newline, in order. Sinks that send one message per event take :attr:`lines` instead. For a sink
    whose ``encoding`` is ``"none"`` (it maps envelopes to rows itself) ``data`` stays empty.
    """

    __slots__ = ("data", "ends", "envelopes")

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.data = bytearray()
        """Each envelope's JSON document and ``\\n``, in order (encoded straight into it: no bytes per line)."""
        self.ends: list[int] = []
        """Where each envelope's line ends in ``data``, after its newline."""

    def __len__(self) -> int:
        return len(self.envelopes)

    @property
    def nbytes(self) -> int:
        """Size of ``data``."""
        return len(self.data)

    @property
    def lines(self) -> list[bytes]:
        """One JSON document per envelope, without its newline (a copy of each out of ``data``)."""
        out = []
        start = 0
        with memoryview(self.data) as view:
            for end in self.ends:
                out.append(view[start : end - 1].tobytes())
                start = end
        return out

    def select(self, indexes: Iterable[int]) -> Batch:
        """A new batch of the envelopes at ``indexes`` (in that order), their lines copied, not encoded again."""
        part = Batch()
        encoded = bool(self.ends)
        data = self.data
        for index in indexes:
            part.envelopes.append(self.envelopes[index])
            if encoded:
                start = self.ends[index - 1] if index else 0
                part.data += data[start : self.ends[index]]
                part.ends.append(len(part.data))
        return part


class BatchEncoder:
    """Adds units' envelopes to a batch in the form a sink asked for (its ``encoding``).

    ``json_lines``: each envelope is encoded once, straight into ``batch.data``. The envelopes of one
    unit usually share one :class:`Source` (an HTTP request's, with its headers): it is encoded once
    per unit and spliced in as raw JSON. ``none``: only ``batch.envelopes`` is filled.
    """

    __slots__ = ("_encode", "_encode_into", "encoding")

    def __init__(self, encoding: Encoding = "json_lines") -> None:
        self.encoding = encoding
        encoder = msgspec.json.Encoder()
        self._encode = encoder.encode
        self._encode_into = encoder.encode_into

    def add(self, batch: Batch, envelopes: list[Envelope]) -> None:
        if self.encoding == "json_lines":
            data = batch.data
            ends = batch.ends
            encode_into = self._encode_into
            if len(envelopes) == 1:
                encode_into(envelopes[0], data, -1)
                data.append(10)  # "\n"
                ends.append(len(data))
            else:
                encode = self._encode
                source: Any = None
                raw: Any = None
                for envelope in envelopes:
                    if envelope.source is not source:
                        source = envelope.source
                        raw = msgspec.Raw(encode(source))
                    # Swapped in only for this synchronous encode: the envelope is unchanged after it.
                    envelope.source = raw
                    try:
                        encode_into(envelope, data, -1)
                    finally:
                        envelope.source = source
                    data.append(10)
                    ends.append(len(data))
        batch.envelopes.extend(envelopes)

    def batch(self, envelopes: list[Envelope]) -> Batch:
        """A batch of ``envelopes``, as a sink worker would make it."""
        batch = Batch()
        self.add(batch, envelopes)
        return batch


class Sink(Component, ABC):
    """Writes batches. ``write`` returns only once the batch is durable for this sink.

    ``write`` raises on failure, ideally one of :mod:`streamer.core.errors` (retryable, fatal, or a
    :class:`~streamer.core.errors.BatchError` naming the records that failed); it never retries and
    never logs per event: the worker does both. ``encoding`` says what the worker prepares: JSON lines
    in ``batch.data`` (the default) or nothing beyond ``batch.envelopes`` (``"none"``, for sinks that
    map envelopes to rows or records themselves and would not use the lines).
    """

    encoding: ClassVar[Encoding] = "json_lines"

    def __init__(self, name: str, spec: Any, context: Context) -> None:
        self.name = name
        self.spec = spec
        self.context = context

    async def open(self) -> None:
        """Connect. The pipeline is ready when every sink is open."""

    @abstractmethod
    async def write(self, batch: Batch) -> None: ...

    async def aclose(self) -> None:
        """Flush and release resources; called after the last write."""
