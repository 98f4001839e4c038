"""What a connector is: the base classes every input, processor and sink derives from.

A connector module declares a ``Spec`` struct (its config, tagged by ``type``),
the class that runs it, and the backends it supports. The spec structs stay
light: a module imports its client library inside the class, never at module
level, so that compiling a pipeline imports only what it uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol

import anyio
import msgspec
from anyio.abc import TaskStatus

from streamer.core.envelope import Envelope

if TYPE_CHECKING:
    from streamer.core.delivery import Delivery
    from streamer.core.registry import SchemaResolver

__all__ = [
    "BOTH_BACKENDS",
    "Batch",
    "Component",
    "Context",
    "DeliverySpec",
    "Input",
    "InputSpec",
    "Processor",
    "ProcessorSpec",
    "Sink",
    "SinkSpec",
    "Submit",
]

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
    """

    def __call__(self, envelopes: list[Envelope], /) -> Awaitable[Delivery]: ...

    def nowait(self, envelopes: list[Envelope], /) -> Delivery | Awaitable[Delivery]: ...


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
        int, msgspec.Meta(ge=0, description="Attempts after the first failed write before giving up on a batch.")
    ] = 3
    retry_backoff: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds before the first retry; doubles each time, up to 30 s.")
    ] = 0.1


class SinkSpec(Spec):
    route: Annotated[
        Literal["valid", "invalid", "all"],
        msgspec.Meta(description="Which events this sink receives."),
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
    """Shared by all connectors: the spec type and the backends it runs on."""

    Spec: ClassVar[type[msgspec.Struct]]
    backends: ClassVar[frozenset[str]] = BOTH_BACKENDS


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
    newline, in order. Sinks that send one message per event take :attr:`lines` instead.
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


class Sink(Component, ABC):
    """Writes batches. ``write`` returns only once the batch is durable for this sink."""

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
