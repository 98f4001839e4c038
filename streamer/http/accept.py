"""Taking the connections waiting on a listening socket: all of them at once, not one per loop turn.

Both HTTP servers accept through :func:`accept_waiting` whenever their listening socket is readable.
The event loops' own accept paths take one connection per turn of the loop: the libuv of uvloop 0.23
(measured), and anyio's ``accept`` (a checkpoint each) on asyncio and trio. Under load a turn takes as
long as the requests it answers (tens of milliseconds with 64 busy connections), so a burst of new
connections waited in the kernel's backlog for one turn each: 64 clients connecting at once saw up
to 1.7 s before their first request was read (``docs/performance.md``, "Accepting connections").
"""

from __future__ import annotations

import socket

__all__ = ["ACCEPT_BATCH", "ACCEPT_RETRY_DELAY", "accept_waiting"]

ACCEPT_BATCH = 128
"""Connections taken per readiness of the listening socket at most: a flood of new clients gets the
rest on the next turn, so the connections already open keep being served meanwhile."""
ACCEPT_RETRY_DELAY = 1.0
"""Seconds a server stops accepting after the process ran out of descriptors or memory (asyncio's
own delay): retrying at once would spin, as the connection stays in the backlog."""


def accept_waiting(listening: socket.socket, limit: int = ACCEPT_BATCH) -> tuple[list[socket.socket], OSError | None]:
    """The connections waiting on the non-blocking TCP ``listening`` socket (up to ``limit``).

    They come non-blocking, with ``TCP_NODELAY`` set.

    A connection reset before it was accepted is skipped. The error is set when accepting failed
    otherwise (the process is out of descriptors or memory): the caller keeps what came before it,
    logs it and stops accepting for :data:`ACCEPT_RETRY_DELAY` seconds rather than spin.
    """
    accepted: list[socket.socket] = []
    while len(accepted) < limit:
        try:
            connection, _ = listening.accept()
        except (BlockingIOError, InterruptedError):
            break
        except ConnectionAbortedError:
            continue
        except OSError as exc:
            return accepted, exc
        connection.setblocking(False)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # responses go out as written
        accepted.append(connection)
    return accepted, None
