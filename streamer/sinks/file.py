"""Write envelopes to a file as JSON lines, with an fsync policy and rotation.

A batch is acknowledged once it is written to the operating system (``fsync:
never``) or once it is on disk (``fsync: batch``). With rotation, the current
file is renamed to ``<stem>-<UTC time>.<suffix>`` once a write takes it to
``max_bytes``, or before a write when it is ``max_age`` seconds old (an idle
file is left as it is), and a new one is started. Batches are never split
across files.

Example::

    sinks:
      archive:
        type: file
        path: out/valid.jsonl
        fsync: batch
        rotate:
          max_bytes: 104857600
          max_age: 3600
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Literal

import anyio
import msgspec

from streamer.core.components import Batch, Context, Sink, SinkSpec
from streamer.core.errors import RetryableError

__all__ = ["FileSink", "FileSinkSpec", "RotateSpec"]


class RotateSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """When to start a new file."""

    max_bytes: Annotated[int, msgspec.Meta(ge=1), msgspec.Meta(description="Rotate at this size.")] | None = None
    max_age: (
        Annotated[float, msgspec.Meta(gt=0), msgspec.Meta(description="Rotate when the file is this many seconds old.")]
        | None
    ) = None


class FileSinkSpec(SinkSpec, tag="file", kw_only=True):
    """JSON lines appended to a file."""

    path: Annotated[str, msgspec.Meta(description="File to append to; its directory is created.")]
    fsync: Annotated[
        Literal["never", "batch"],
        msgspec.Meta(description="`batch`: fsync before acknowledging each batch; `never`: leave it to the OS."),
    ] = "never"
    rotate: Annotated[RotateSpec | None, msgspec.Meta(description="Rotation by size and/or age.")] = None


class FileSink(Sink):
    Spec = FileSinkSpec
    spec: FileSinkSpec

    def __init__(self, name: str, spec: FileSinkSpec, context: Context) -> None:
        super().__init__(name, spec, context)
        path = Path(spec.path)
        self.path = path if path.is_absolute() else context.base_dir / path
        self._file: BinaryIO | None = None
        self._size = 0
        self._opened_at = 0.0

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open across batches
        self._size = self._file.tell()
        self._opened_at = time.monotonic()

    async def write(self, batch: Batch) -> None:
        data = batch.data
        try:
            if self.spec.fsync == "batch" or self.spec.rotate is not None:
                await anyio.to_thread.run_sync(self._write, data)
            else:
                self._write(data)  # a buffered write is cheaper than a thread hop
        except OSError as exc:
            # A full disk, a lost mount, a permission an operator can fix: worth retrying, then dead letters.
            raise RetryableError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def _write(self, data: bytes | bytearray) -> None:
        if self._file is None:
            self._open()
        rotate = self.spec.rotate
        if (
            rotate is not None and rotate.max_age is not None and self._size > 0
            and time.monotonic() - self._opened_at >= rotate.max_age
        ):
            self._rotate()
        file: Any = self._file
        file.write(data)
        file.flush()
        if self.spec.fsync == "batch":
            os.fsync(file.fileno())
        self._size += len(data)
        if rotate is not None and rotate.max_bytes is not None and self._size >= rotate.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        """Rename the current file aside and start a new one (a file spans at most max_age seconds)."""
        assert self._file is not None
        self._file.close()
        self._file = None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%f")
        target = self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}")
        os.replace(self.path, target)
        self._open()

    async def aclose(self) -> None:
        if self._file is not None:
            file = self._file
            self._file = None
            await anyio.to_thread.run_sync(_close, file, self.spec.fsync == "batch")


def _close(file: BinaryIO, sync: bool) -> None:
    file.flush()
    if sync:
        os.fsync(file.fileno())
    file.close()
