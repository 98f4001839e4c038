"""The envelope: one msgspec struct that every event travels in, whatever its input.

Every field is documented in ``docs/envelope.md``. Envelopes are mutable on
purpose: processors annotate them in place instead of copying per event.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = [
    "DeadLetter",
    "DeadLetterInfo",
    "Envelope",
    "ErrorDetail",
    "SelfDescribing",
    "Source",
    "fill_self_describing",
    "new_event_id",
    "new_event_ids",
    "schema_parts",
    "set_schema",
    "utc_now",
]


class ErrorDetail(msgspec.Struct, kw_only=True):
    """Why an event is invalid: where, which rule, and a sentence for people."""

    path: str = "$"
    """JSON path of the offending value inside the payload (``$`` is the root)."""
    keyword: str
    """The JSON Schema keyword that failed, or a streamer error kind such as ``decode``."""
    message: str
    schema: str | None = None
    """The schema URI that was checked, when the error is about a context or an envelope part."""


class SelfDescribing(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A self-describing JSON value: a schema URI and the data it describes."""

    schema: str
    data: Any


class Source(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Where an event came from."""

    input: str
    """Name of the pipeline input that produced the event."""
    client_ip: str | None = None
    user_agent: str | None = None
    headers: dict[str, str] | None = None
    """Request headers, minus Cookie, Authorization and any configured deny-list."""
    metadata: dict[str, Any] | None = None
    """Input-specific facts: Kafka topic/partition/offset, CDC LSN, CloudEvents attributes, ..."""


class Envelope(msgspec.Struct, kw_only=True):
    """One event and everything streamer knows about it."""

    id: str
    collector_tstamp: datetime
    source: Source
    protocol: str
    """How the event arrived: ``self_describing``, ``snowplow``, ``cloudevents``, ``raw``, ..."""
    payload: Any = None
    """The event's data. ``bytes`` until the decode processor has parsed a raw input line."""
    schema: str | None = None
    """Iglu URI, ``iglu:vendor/name/format/M-R-A``."""
    schema_vendor: str | None = None
    schema_name: str | None = None
    schema_format: str | None = None
    schema_version: str | None = None
    event_tstamp: datetime | None = None
    contexts: list[SelfDescribing] | None = None
    atomic: dict[str, Any] | None = None
    """Tracker protocol fields as sent (Snowplow: ``e``, ``aid``, ``p``, ``tv``, ``eid``, ``url``, ...)."""
    valid: bool = True
    errors: list[ErrorDetail] | None = None
    tags: dict[str, str] | None = None

    def fail(self, error: ErrorDetail) -> None:
        """Mark invalid, keeping every error already recorded."""
        self.valid = False
        if self.errors is None:
            self.errors = [error]
        else:
            self.errors.append(error)


SchemaParts = tuple[str | None, str | None, str | None, str | None]
NO_SCHEMA_PARTS: SchemaParts = (None, None, None, None)
_SCHEMA_PARTS: dict[str, SchemaParts] = {}


class DeadLetterInfo(msgspec.Struct, kw_only=True):
    """Why an event is in a dead-letter sink."""

    sink: str
    """The sink that could not take the event."""
    reason: str
    """``failed``: the sink gave up after its retries (or on a fatal error); ``overflow``: its buffer was
    full and its ``when_full`` is ``dead_letter``."""
    error: str | None = None
    """The last error the sink raised, for ``failed``."""
    attempts: int = 0
    """Writes tried (0 for ``overflow``)."""
    time: datetime
    """When the event was given up on."""


class DeadLetter(msgspec.Struct, kw_only=True):
    """An event as a dead-letter sink stores it: the original envelope, untouched, and why it is there.

    The ``file`` input with ``format: envelope`` reads these lines back as the original envelopes (same
    ids and times), which is how dead letters are replayed into the sink that missed them.
    """

    dead_letter: DeadLetterInfo
    envelope: Envelope


def schema_parts(uri: str) -> SchemaParts:
    """``(vendor, name, format, version)`` of an Iglu URI, or ``NO_SCHEMA_PARTS`` when it is not one.

    Cached: events name a handful of schemas over and over, and a dict read costs a fraction of the split.
    """
    parts = _SCHEMA_PARTS.get(uri)
    if parts is None:
        pieces = uri[5:].split("/") if uri.startswith("iglu:") else []
        parts = (pieces[0], pieces[1], pieces[2], pieces[3]) if len(pieces) == 4 and all(pieces) else NO_SCHEMA_PARTS
        if len(_SCHEMA_PARTS) >= 10_000:  # URIs come from clients: bound the cache
            _SCHEMA_PARTS.clear()
        _SCHEMA_PARTS[uri] = parts
    return parts


def set_schema(envelope: Envelope, uri: str) -> None:
    """Set the schema URI and its parts (parts stay empty when the URI is not Iglu form)."""
    envelope.schema = uri
    parts = schema_parts(uri)
    if parts is not NO_SCHEMA_PARTS:
        envelope.schema_vendor, envelope.schema_name, envelope.schema_format, envelope.schema_version = parts


def fill_self_describing(
    envelope: Envelope,
    item: Any,
    schema_key: str = "schema",
    data_key: str = "data",
    contexts_key: str = "contexts",
) -> None:
    """Take schema, data and contexts from a self-describing item; mark the envelope invalid if it is not one.

    Only the event's own keys are configurable; contexts are standard self-describing
    JSON (``schema``/``data``). Every malformed part is an error on the envelope,
    so nothing is dropped silently.
    """
    schema = item.get(schema_key) if isinstance(item, dict) else None
    if not isinstance(schema, str) or data_key not in item:
        envelope.payload = item
        envelope.fail(
            ErrorDetail(
                keyword="self_describing",
                message=f"expected an object with a string `{schema_key}` and a `{data_key}`",
            )
        )
        return
    set_schema(envelope, schema)
    envelope.payload = item[data_key]
    raw = item.get(contexts_key)
    if raw is None:
        return
    where = f"$.{contexts_key}"
    if not isinstance(raw, list):
        envelope.fail(ErrorDetail(path=where, keyword="contexts", message=f"`{contexts_key}` must be a list"))
        return
    contexts = []
    for index, context in enumerate(raw):
        if isinstance(context, dict) and isinstance(context.get("schema"), str) and "data" in context:
            contexts.append(SelfDescribing(schema=context["schema"], data=context["data"]))
        else:
            envelope.fail(
                ErrorDetail(
                    path=f"{where}[{index}]",
                    keyword="contexts",
                    message="a context must be an object with a string `schema` and a `data`",
                )
            )
    envelope.contexts = contexts


_IDS_PER_BLOCK = 2048
_HEX_RUNS = ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24))
"""(first, end) hex digits of 16 random bytes -> where they go in the 36-character id."""
_VARIANT = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")
"""Any hex digit -> one whose top bits are 10: the RFC 9562 variant."""
_SEPARATOR = b" "


class _IdPool:
    """Random UUIDv4 strings made 2048 at a time from one ``os.urandom`` block.

    ``str(uuid.uuid4())`` costs ~6 us. Here the whole block's ids are laid out in one buffer, each
    hex digit position copied for all 2048 ids at once by a strided slice, the version and variant
    digits set the same way, and ``split`` cuts the strings: ~0.3 us an id at refill (a regex
    ``findall`` + join, before: ~0.9), and a ``list.pop`` after.
    """

    __slots__ = ("_ids",)

    def __init__(self) -> None:
        self._ids: list[str] = []

    def next(self) -> str:
        ids = self._ids
        if not ids:
            self._refill()
        return ids.pop()

    def take(self, count: int) -> list[str]:
        """``count`` new ids at once (a batch's worth)."""
        ids = self._ids
        while len(ids) < count:
            self._refill()
        taken = ids[-count:] if count else []
        del ids[len(ids) - count :]
        return taken

    def _refill(self) -> None:
        count = _IDS_PER_BLOCK
        digits = os.urandom(16 * count).hex().encode("ascii")
        # 36 characters an id and a separator between ids; the dashes are there from the start.
        laid_out = bytearray(b"-" * (37 * count - 1))
        for first, end, to in _HEX_RUNS:
            for offset in range(end - first):
                laid_out[to + offset :: 37] = digits[first + offset :: 32]
        laid_out[14::37] = b"4" * count  # version 4
        laid_out[19::37] = digits[16::32].translate(_VARIANT)
        laid_out[36::37] = _SEPARATOR * (count - 1)
        self._ids.extend(laid_out.decode("ascii").split(" "))


_ID_POOL = _IdPool()
new_event_id = _ID_POOL.next
"""Return a new random UUIDv4 string."""
new_event_ids = _ID_POOL.take
"""Return a list of ``count`` new random UUIDv4 strings."""


def utc_now() -> datetime:
    return datetime.now(UTC)
