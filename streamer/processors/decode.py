"""Decode raw input lines (file, stdin, Kafka values) into envelopes.

A line may be self-describing JSON (``{"schema": ..., "data": ...}``), an
envelope a sink wrote earlier, or a dead letter (``{"dead_letter": ..., "envelope":
...}``, read as the envelope it wraps). A replayed envelope keeps its id and times
and is validated again. Anything else (a line that is not JSON, or nests arrays and
objects more than 132 levels deep: the limit of ``streamer.core.nesting`` plus what an envelope
adds) stays in the pipeline as an invalid envelope whose payload is the text of the line, so
nothing vanishes. Envelopes already
decoded by their input (HTTP protocols) pass through untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec

from streamer.core.components import Processor, ProcessorSpec
from streamer.core.envelope import Envelope, ErrorDetail, fill_self_describing
from streamer.core.nesting import ENVELOPE_WRAPPING, MAX_JSON_DEPTH, depth_limited

__all__ = ["Decode", "DecodeSpec"]


class DecodeSpec(ProcessorSpec, tag="decode", kw_only=True):
    """Parse raw JSON lines into envelopes."""


# A line may be an envelope or dead letter streamer wrote, which holds a received value a few levels
# deeper than it came: such lines are allowed that much more, so that everything written can be replayed.
_decode = depth_limited(msgspec.json.Decoder().decode, MAX_JSON_DEPTH + ENVELOPE_WRAPPING)
_ENVELOPE_KEYS = frozenset({"id", "collector_tstamp", "source", "protocol"})
_DEAD_LETTER_KEYS = frozenset({"dead_letter", "envelope"})


class Decode(Processor):
    Spec = DecodeSpec

    async def process(self, envelopes: list[Envelope]) -> list[Envelope]:
        return self.process_nowait(envelopes)

    def process_nowait(self, envelopes: list[Envelope]) -> list[Envelope]:
        for index, envelope in enumerate(envelopes):
            if envelope.protocol == "raw" and isinstance(envelope.payload, bytes):
                envelopes[index] = decode_line(envelope)
        return envelopes


def decode_line(envelope: Envelope) -> Envelope:
    raw: bytes = envelope.payload
    try:
        document: Any = _decode(raw)
    except msgspec.DecodeError as exc:
        envelope.payload = raw.decode("utf-8", "replace")
        envelope.fail(ErrorDetail(keyword="decode", message=f"not valid JSON: {exc}"))
        return envelope
    if isinstance(document, dict) and document.keys() == _DEAD_LETTER_KEYS and isinstance(document["envelope"], dict):
        document = document["envelope"]  # a dead letter is replayed as the envelope it wraps, not wrapped again
    if isinstance(document, dict) and document.keys() >= _ENVELOPE_KEYS:
        try:
            replayed = msgspec.convert(document, Envelope)
        except msgspec.ValidationError as exc:
            envelope.payload = document
            envelope.fail(ErrorDetail(keyword="decode", message=f"not a streamer envelope: {exc}"))
            return envelope
        replayed.valid, replayed.errors = True, None
        return replayed
    fill_self_describing(envelope, document)
    return envelope
