"""Read JSON lines from standard input until it closes.

Example::

    inputs:
      pipe:
        type: stdin
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, BinaryIO

import msgspec

from streamer.core.components import InputSpec
from streamer.inputs.file import LineInput

__all__ = ["StdinInput", "StdinInputSpec"]


class StdinInputSpec(InputSpec, tag="stdin", kw_only=True):
    """JSON lines on standard input."""

    max_in_flight: Annotated[
        int, msgspec.Meta(ge=1, description="Chunks that may await acknowledgement at once.")
    ] = 8


class StdinInput(LineInput):
    Spec = StdinInputSpec
    blocking_reads = True

    def open_stream(self) -> tuple[BinaryIO, Callable[[], None]]:
        return sys.stdin.buffer, lambda: None
