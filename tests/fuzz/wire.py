"""Raw HTTP/1.1 for the fuzz suite: requests built byte by byte, responses read back off a real socket.

httpx cannot send what the suite needs to send (duplicate or broken headers, lying lengths, cut
framing, odd methods), so requests are bytes and responses are parsed with httptools.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import httptools
import msgspec

__all__ = ["Request", "Response", "exchange", "parse_responses"]


@dataclass
class Request:
    """A request as parts the mutations edit; :meth:`encode` gives its bytes."""

    method: str
    path: str
    query: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    doc: Any = None
    """The JSON body (or, for GET routes, the query parameters) as data; the body is made from it."""
    doc_is_query: bool = False
    version: str = "HTTP/1.1"
    content_length: str | None = None
    """A Content-Length other than the body's length (a lie), or None for the truth."""
    no_length: bool = False
    chunked: bool = False
    bad_chunks: bool = False
    suffix: bytes = b""
    """Bytes sent after the request (pipelined garbage)."""
    cut: int | None = None
    """Send only this many bytes of the request, then wait: the server must time the request out."""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def set_header(self, name: str, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name]
        if value is not None:
            self.headers.append((name, value))

    def encode(self) -> bytes:
        target = self.path + ("?" + self.query if self.query else "")
        head = [f"{self.method} {target} {self.version}".encode("latin-1", "replace")]
        for name, value in self.headers:
            head.append(f"{name}: {value}".encode("latin-1", "replace"))
        body = self.body
        if self.chunked:
            head.append(b"transfer-encoding: chunked")
            if self.bad_chunks:
                body = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
            else:
                pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
                body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        if self.content_length is not None:
            head.append(b"content-length: " + self.content_length.encode("latin-1"))
        elif not self.chunked and not self.no_length and (body or self.method in ("POST", "PUT", "PATCH")):
            head.append(b"content-length: %d" % len(body))
        raw = b"\r\n".join(head) + b"\r\n\r\n" + body + self.suffix
        return raw if self.cut is None else raw[: self.cut]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.headers.get('content-type')} {self.body[:300]!r}>"


class _Collector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.responses.append(Response(status, self._headers, b"".join(self._body)))
        self._headers, self._body = {}, []


def parse_responses(data: bytes) -> list[Response]:
    """Every complete response in ``data``; raises if the bytes are not HTTP/1.1 responses."""
    collector = _Collector()
    if data:
        collector.parser.feed_data(data)
    return collector.responses


async def exchange(port: int, raw: bytes, timeout: float = 10.0) -> list[Response]:
    """Send ``raw`` on a new connection and read until the server closes it (or ``timeout`` passes).

    The requests the suite sends end with ``Connection: close`` (or break the connection), so the
    server closing is how an exchange ends; a server still silent after ``timeout`` is hanging.
    """
    received = bytearray()
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        try:
            await stream.send(raw)
        except (anyio.BrokenResourceError, ConnectionError):
            pass  # the server refused the request before reading all of it; its answer may be there
        with anyio.move_on_after(timeout) as scope:
            while True:
                try:
                    chunk = await stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    break
                received += chunk
        if scope.cancelled_caught:
            raise AssertionError(f"no end of the exchange within {timeout} s; received {bytes(received[:300])!r}")
    return parse_responses(bytes(received))
