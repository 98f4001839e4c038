"""Taking the connections waiting on a listening socket (``streamer.http.accept``)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from streamer.http.accept import accept_waiting


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        yield server


def test_every_waiting_connection_is_taken_up_to_the_limit(listening: socket.socket) -> None:
    clients = [socket.create_connection(listening.getsockname()) for _ in range(5)]
    try:
        first, error = accept_waiting(listening, limit=3)
        rest, later_error = accept_waiting(listening, limit=3)
        empty, _ = accept_waiting(listening)
        assert (len(first), len(rest), empty, error, later_error) == (3, 2, [], None, None)
        for connection in first + rest:
            assert connection.getblocking() is False
            assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            connection.close()
    finally:
        for client in clients:
            client.close()


class _Failing:
    """A listening socket whose accepts go: aborted, one connection, then out of descriptors."""

    def __init__(self, connection: socket.socket) -> None:
        running_out = OSError(errno.EMFILE, "Too many open files")
        self.outcomes: list[object] = [ConnectionAbortedError(), connection, running_out]

    def accept(self) -> tuple[socket.socket, object]:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, socket.socket)
        return outcome, ("127.0.0.1", 1)


def test_an_aborted_connection_is_skipped_and_running_out_is_reported_with_what_came_before(
    listening: socket.socket,
) -> None:
    with socket.create_connection(listening.getsockname()):
        (connection,), _ = accept_waiting(listening)
        with connection:
            accepted, error = accept_waiting(_Failing(connection))  # type: ignore[arg-type]
            assert accepted == [connection]
            assert isinstance(error, OSError) and error.errno == errno.EMFILE
