"""Write envelopes to standard output, one JSON document per line.

Example::

    sinks:
      console:
        type: stdout
        route: all
"""

from __future__ import annotations

import sys

from streamer.core.components import Batch, Sink, SinkSpec

__all__ = ["StdoutSink", "StdoutSpec"]


class StdoutSpec(SinkSpec, tag="stdout", kw_only=True):
    """JSON lines on standard output."""


class StdoutSink(Sink):
    Spec = StdoutSpec

    async def write(self, batch: Batch) -> None:
        out = sys.stdout.buffer
        out.write(batch.data)
        out.flush()
