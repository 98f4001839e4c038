"""Transactions streamed before they commit (pgoutput protocol version 2), held on disk until they do.

With ``streaming 'on'`` the server sends a large transaction in blocks while it is still running (Stream
Start, its changes, Stream Stop; blocks of several transactions interleave, and ordinary transactions
pass between them), then Stream Commit or Stream Abort. A change must not become an event before its
transaction commits (it may be rolled back), and holding the blocks in memory would defeat the point,
so :class:`StreamSpool` writes each transaction's messages to its own temporary file. At Stream Commit
it gives them back, framed as an ordinary transaction (a Begin, the messages, a Commit, in the
version 1 format), for the input to read like any other; at Stream Abort it drops the file, or, for a
subtransaction, the subtransaction's messages.

The input passes each receive's payloads through :meth:`StreamSpool.feed`; everything outside stream
blocks goes through unchanged, and a committed transaction is read back lazily, a block of the file at
a time, so memory stays bounded however large it is.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO

__all__ = ["StreamSpool"]

_XID = struct.Struct("!I")
_RECORD = struct.Struct("!II")  # length, xid of the (sub)transaction
_BEGIN = struct.Struct("!cQqI")
_COMMIT = struct.Struct("!cBQQq")
_STREAM_COMMIT = struct.Struct("!IBQQq")
_HEADER = b"w" + bytes(24)  # an XLogData header: "w", then WAL start, WAL end, send time (0 for framing)

# Messages that carry the transaction's xid inside a stream block (after their kind byte).
_WITH_XID = frozenset(b"IUDTRYM")


class _Transaction:
    __slots__ = ("aborted", "file", "size")

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile(prefix="streamer-pgoutput-")  # noqa: SIM115 - closed below
        self.aborted: set[int] = set()
        self.size = 0


class StreamSpool:
    """Holds streamed transactions on disk until they commit; see the module docstring."""

    def __init__(self, read_size: int = 1 << 20) -> None:
        self._open: dict[int, _Transaction] = {}
        self._current: _Transaction | None = None
        self._read_size = read_size
        self.spooled_bytes = 0
        """Bytes of streamed messages written to spool files so far (a statistic)."""

    @property
    def open_transactions(self) -> int:
        return len(self._open)

    def feed(self, payloads: Iterable[bytes]) -> Iterator[bytes]:
        """The payloads to process, in order: those outside stream blocks as they are, a committed
        streamed transaction as Begin, its messages, Commit."""
        for payload in payloads:
            if payload[0] != 119:  # keepalive
                yield payload
                continue
            kind = payload[25]
            current = self._current
            if current is not None and kind != 69:  # inside a block, not Stream Stop
                if kind in _WITH_XID:
                    (xid,) = _XID.unpack_from(payload, 26)
                    record = payload[:26] + payload[30:]  # the version 1 form: without the xid
                else:
                    xid, record = 0, payload
                current.file.write(_RECORD.pack(len(record), xid))
                current.file.write(record)
                current.size += len(record)
                self.spooled_bytes += len(record)
            elif kind == 83:  # "S": Stream Start
                (xid,) = _XID.unpack_from(payload, 26)
                transaction = self._open.get(xid)
                if transaction is None:
                    transaction = self._open[xid] = _Transaction()
                self._current = transaction
            elif kind == 69:  # "E": Stream Stop
                self._current = None
            elif kind == 99:  # "c": Stream Commit
                xid, _flags, commit_lsn, end_lsn, commit_time = _STREAM_COMMIT.unpack_from(payload, 26)
                transaction = self._open.pop(xid, None)
                yield _HEADER + _BEGIN.pack(b"B", commit_lsn, commit_time, xid)
                if transaction is not None:
                    yield from self._replay(transaction)
                yield _HEADER + _COMMIT.pack(b"C", 0, commit_lsn, end_lsn, commit_time)
            elif kind == 65:  # "A": Stream Abort
                xid, subxid = struct.unpack_from("!II", payload, 26)
                transaction = self._open.get(xid)
                if transaction is not None:
                    if subxid == xid:
                        del self._open[xid]
                        transaction.file.close()
                    else:
                        transaction.aborted.add(subxid)
            else:
                yield payload

    def _replay(self, transaction: _Transaction) -> Iterator[bytes]:
        file = transaction.file
        aborted = transaction.aborted
        try:
            file.seek(0)
            buffer = b""
            position = 0
            while True:
                if len(buffer) - position < 8:
                    more = file.read(self._read_size)
                    if not more:
                        return
                    buffer = buffer[position:] + more
                    position = 0
                    continue
                length, xid = _RECORD.unpack_from(buffer, position)
                end = position + 8 + length
                if end > len(buffer):
                    more = file.read(max(self._read_size, length))
                    if not more:
                        raise EOFError("a spooled transaction ends in the middle of a message")
                    buffer = buffer[position:] + more
                    position = 0
                    continue
                if xid not in aborted:
                    yield buffer[position + 8 : end]
                position = end
        finally:
            file.close()

    def close(self) -> None:
        """Drop every transaction still open (the connection is gone: the server sends them again)."""
        for transaction in self._open.values():
            transaction.file.close()
        self._open.clear()
        self._current = None
