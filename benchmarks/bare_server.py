"""Ceilings of streamer's HTTP stack: servers that answer 200 and do nothing else, with httptools.

By default, anyio TCP streams, as ``streamer/http/server.py`` serves (``anyio.create_tcp_listener``,
one task per connection, ``stream.receive(65536)``, httptools callbacks, keep-alive, responses in
order) but with no routing, decoding, validation or writing: the reference of issue 2's ratio target.

With ``--transports`` (asyncio only), asyncio's transports and protocols, as
``streamer/http/asyncio_server.py`` serves on asyncio: bytes in ``data_received``, the response
written from there, no task per request. ``streamer events/s / this req/s`` says how much of the
capacity of the stack streamer actually uses on asyncio the pipeline keeps.

    .venv/bin/python benchmarks/bare_server.py --port 8090 [--backend asyncio|trio] [--transports]

Prints ``listening <port>`` on stdout once it accepts connections; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import anyio
import httptools
from anyio.abc import SocketAttribute, SocketStream

_BODY = b'{"ok":true}'
_KEEP = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(_BODY), _BODY)
_CLOSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
    % (len(_BODY), _BODY)
)


class _Parser:
    """Collects one keep-alive flag per complete request; the body is read and thrown away."""

    __slots__ = ("done", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[bool] = []

    def on_message_complete(self) -> None:
        self.done.append(self.parser.should_keep_alive())


async def _connection(stream: SocketStream) -> None:
    state = _Parser()
    feed = state.parser.feed_data
    done = state.done
    try:
        async with stream:
            while True:
                try:
                    data = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    return
                try:
                    feed(data)
                except httptools.HttpParserError:
                    return
                while done:
                    keep_alive = done.pop(0)
                    await stream.send(_KEEP if keep_alive else _CLOSE)
                    if not keep_alive:
                        return
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
        pass


async def _accept(listener: Any, tg: anyio.abc.TaskGroup) -> None:
    while True:
        stream = await listener.accept()
        tg.start_soon(_connection, stream)


async def serve(host: str, port: int) -> None:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    bound = int(listener.extra(SocketAttribute.local_port))
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            for one in listener.listeners:
                tg.start_soon(_accept, one, tg)
            print(f"listening {bound}", flush=True)
            async for _ in signals:
                tg.cancel_scope.cancel()
                break
    await listener.aclose()


class _Transport(asyncio.Protocol):
    """One connection on asyncio's transports: answered from ``data_received``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(_KEEP if keep_alive else _CLOSE)
        if not keep_alive:
            self.transport.close()


async def serve_transports(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Transport, host, port, backlog=65535, reuse_address=True)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            break
    server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--transports", action="store_true", help="asyncio transports instead of anyio streams")
    args = parser.parse_args(argv)
    if args.transports and args.backend != "asyncio":
        parser.error("--transports needs --backend asyncio")
    options: dict[str, Any] = {}
    if args.backend == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            options["use_uvloop"] = True  # the same choice `streamer run` makes
    anyio.run(serve_transports if args.transports else serve, args.host, args.port,
              backend=args.backend, backend_options=options)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
