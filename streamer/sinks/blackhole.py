"""Discard every event (for benchmarks and for trying a pipeline out).

Example::

    sinks:
      nowhere:
        type: blackhole
        route: all
"""

from __future__ import annotations

from streamer.core.components import Batch, Sink, SinkSpec

__all__ = ["BlackholeSink", "BlackholeSpec"]


class BlackholeSpec(SinkSpec, tag="blackhole", kw_only=True):
    """Accept and discard events."""


class BlackholeSink(Sink):
    Spec = BlackholeSpec

    async def write(self, batch: Batch) -> None:
        return None
