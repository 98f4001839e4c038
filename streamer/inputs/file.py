"""Replay a JSON-lines file: each line becomes one raw envelope for the decode processor.

Lines are submitted in chunks of up to 64 KiB (one acknowledgement unit each); the input
keeps at most ``max_in_flight`` chunks unacknowledged, and returns once every
chunk is written, so ``streamer run`` on a file-only pipeline exits when the
file is done. A chunk a required sink fails to write stops the run with an error.
When it stops early (a drain), the log gives the byte offset before which every line is written.

Example::

    inputs:
      replay:
        type: file
        path: out/invalid.jsonl
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, BinaryIO

import anyio
import msgspec
from anyio.abc import TaskStatus

from streamer.core.checkpoint import Checkpointer
from streamer.core.components import Context, Input, InputSpec, Submit
from streamer.core.envelope import Envelope, Source, new_event_id, utc_now

__all__ = ["FileInput", "FileInputSpec", "LineInput"]

log = logging.getLogger("streamer")


class FileInputSpec(InputSpec, tag="file", kw_only=True):
    """Read a JSON-lines file once."""

    path: Annotated[str, msgspec.Meta(description="The file to read.")]
    max_in_flight: Annotated[
        int, msgspec.Meta(ge=1, description="Chunks that may await acknowledgement at once.")
    ] = 8


class LineInput(Input):
    """Shared by the file and stdin inputs: chunks of lines from a blocking binary stream."""

    blocking_reads = False
    """True where a read can wait indefinitely (a pipe): then a drain abandons it."""

    def open_stream(self) -> tuple[BinaryIO, Callable[[], None]]:
        raise NotImplementedError

    async def _read(self, reader: _LineReader) -> list[bytes]:
        if not self.blocking_reads:
            return await anyio.to_thread.run_sync(reader.read)
        lines: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def stop_reading() -> None:
                await self.context.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(stop_reading)
            lines = await anyio.to_thread.run_sync(reader.read, abandon_on_cancel=True)
            tg.cancel_scope.cancel()
        return lines

    async def run(self, submit: Submit, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        stream, close = self.open_stream()
        task_status.started()
        reader = _LineReader(stream)
        # A chunk's position is the byte offset just after its last line: where a replay would resume.
        checkpoint = Checkpointer[int](self.spec.max_in_flight, committed=0)
        source = Source(input=self.name)
        total = 0
        try:
            while not self.context.stopping.is_set():
                lines = await self._read(reader)
                if not lines:
                    break
                now = utc_now()
                envelopes = [
                    Envelope(id=new_event_id(), collector_tstamp=now, source=source, protocol="raw", payload=line)
                    for line in lines
                ]
                total += len(envelopes)
                # Waits while max_in_flight chunks are unacknowledged, so reading pauses (backpressure);
                # raises the DeliveryFailed of a chunk a required sink failed to write, stopping the run.
                ticket = await checkpoint.track(reader.offset)
                await submit(envelopes, ticket)
            await checkpoint.wait_settled()
        finally:
            close()
        log.info("input finished input=%s lines=%d offset=%d", self.name, total, checkpoint.highest)


class _LineReader:
    """Splits a binary stream into non-empty lines, one buffer-full at a time.

    ``read1`` returns what is available, so a pipe delivers lines as they come
    instead of waiting for a fixed count.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._rest = b""
        self._consumed = 0

    @property
    def offset(self) -> int:
        """Bytes read from the stream up to the end of the last line returned (its newline included)."""
        return self._consumed - len(self._rest)

    def read(self) -> list[bytes]:
        """Complete lines from the next chunk; ``[]`` at end of stream."""
        read1 = getattr(self._stream, "read1", self._stream.read)
        while True:
            data = read1(65536)
            self._consumed += len(data)
            if not data:
                rest, self._rest = self._rest.strip(), b""
                return [rest] if rest else []
            *lines, self._rest = (self._rest + data).split(b"\n")
            complete = [stripped for line in lines if (stripped := line.strip())]
            if complete:
                return complete


class FileInput(LineInput):
    Spec = FileInputSpec
    spec: FileInputSpec

    def __init__(self, name: str, spec: FileInputSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        path = Path(spec.path)
        self.path = path if path.is_absolute() else context.base_dir / path

    def open_stream(self) -> tuple[BinaryIO, Callable[[], None]]:
        stream = open(self.path, "rb")  # noqa: SIM115 - closed by run()
        return stream, stream.close
