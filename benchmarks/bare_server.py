"""The ceiling of streamer's HTTP stack: anyio TCP streams + httptools, answering 200 and nothing else.

It accepts and reads exactly as ``streamer/http/server.py`` does (``anyio.create_tcp_listener``, one task
per connection, ``stream.receive(65536)``, httptools callbacks, keep-alive, responses in order) but does no
routing, decoding, validation or writing, so ``streamer events/s / bare req/s`` says how much of the
stack's capacity the pipeline keeps.

    .venv/bin/python benchmarks/bare_server.py --port 8090 [--backend asyncio|trio]

Prints ``listening <port>`` on stdout once it accepts connections; exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    if args.backend == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            options["use_uvloop"] = True  # the same choice `streamer run` makes
    anyio.run(serve, args.host, args.port, backend=args.backend, backend_options=options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
