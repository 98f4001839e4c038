"""HTTP/1.1 on the wire: request parsing with httptools (and its limits), response encoding.

Shared by the servers: :mod:`streamer.http.server` (anyio streams, any backend) and
:mod:`streamer.http.asyncio_server` (asyncio transports). A request that breaks a limit or the
protocol raises :class:`BadRequest` from a parser callback, carrying the response to send before
the connection is closed.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from http import HTTPStatus

import httptools

from streamer.http.messages import Request, Response, error_response

__all__ = ["CONTINUE", "BadRequest", "Limits", "RequestParser", "encode_response", "timeout_response"]


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1_048_576
    max_header_bytes: int = 65_536
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    handler_timeout: float = math.inf
    """Seconds the app may take to answer a request before the client gets the timeout response."""
    retry_after: int = 1
    """``Retry-After`` seconds advised by the default timeout response."""

    @property
    def tick(self) -> float:
        """How often a server's watchdog checks deadlines: an eighth of the shortest timeout, 5 ms to 1 s."""
        shortest = min(self.header_timeout, self.body_timeout, self.idle_timeout, self.handler_timeout)
        return min(max(shortest / 8, 0.005), 1.0)

    def timeout_response(self, request: Request) -> Response:
        """The default answer to a request not handled within ``handler_timeout``."""
        return timeout_response(self.handler_timeout, self.retry_after)


_HEADER_NAMES: dict[bytes, str] = {}  # header names as sent -> lower-cased str, filled as they are seen
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")}


class BadRequest(Exception):
    """A request refused by a parser callback; ``response`` says why."""

    def __init__(self, response: Response) -> None:
        self.response = response


class RequestParser:
    """httptools callbacks collecting complete requests (pipelined ones queue up in ``done``)."""

    __slots__ = (
        "body",
        "body_size",
        "client",
        "continued",
        "done",
        "header_bytes",
        "headers",
        "limits",
        "parser",
        "started",
        "url",
    )

    def __init__(self, limits: Limits, client: tuple[str, int]) -> None:
        self.limits = limits
        self.client = client
        self.parser = httptools.HttpRequestParser(self)
        self.done: list[tuple[Request, bool]] = []
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_size = 0
        self.started = False
        """A request has begun (its URL is arriving); ``body_size`` tells whether its body has."""
        self.continued = False
        """The request in progress has had its ``100 Continue`` (or needs none): see :meth:`continue_due`."""

    # Only the callbacks needed: httptools calls each one defined, at ~1 us a call. The request has
    # begun when its URL arrives (no on_message_begin); the declared length is checked as its header
    # arrives (no on_headers_complete).

    def on_url(self, url: bytes) -> None:
        self.started = True
        self.url += url
        if len(self.url) > self.limits.max_header_bytes:
            raise BadRequest(error_response(414, "uri_too_long", "the request URL is too long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_bytes += len(name) + len(value)
        if self.header_bytes > self.limits.max_header_bytes:
            raise BadRequest(error_response(431, "headers_too_large", "the request headers are too large"))
        key = _HEADER_NAMES.get(name)
        if key is None:
            key = name.decode("latin-1").lower()
            if len(_HEADER_NAMES) < 512:  # bounded: names are chosen by clients
                _HEADER_NAMES[name] = key
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        if previous is None:
            self.headers[key] = text
            if key == "content-length" and text.isdigit() and int(text) > self.limits.max_body_bytes:
                raise BadRequest(_too_large(self.limits))
        else:
            self.headers[key] = previous + ("; " if key == "cookie" else ", ") + text

    def on_body(self, chunk: bytes) -> None:
        self.body_size += len(chunk)
        if self.body_size > self.limits.max_body_bytes:
            raise BadRequest(_too_large(self.limits))
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        url = self.url
        if url[:1] == b"/" and b"?" not in url and b"#" not in url:
            path, query = url.decode("latin-1"), ""  # a plain path: what parse_url would return
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                # The request line parsed, its target does not (a host of "127.0.0.1*"): the client's fault.
                shown = url[:200].decode("latin-1")
                raise BadRequest(error_response(400, "bad_url", f"the request target {shown!r} is not a URL")) from None
            path = parsed.path.decode("latin-1")
            query = parsed.query.decode("latin-1") if parsed.query else ""
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        encoding = self.headers.get("content-encoding")
        if encoding is not None and body:
            body = _decompress(encoding, body, self.limits)
        method = self.parser.get_method()
        request = Request(
            _METHODS.get(method) or method.decode("ascii"), path, query, self.headers, body, self.client
        )
        self.done.append((request, self.parser.should_keep_alive()))
        self.url = b""
        self.headers = {}
        self.header_bytes = 0
        self.body = []
        self.body_size = 0
        self.started = False
        self.continued = False

    def continue_due(self) -> bool:
        """Whether the request being read waits for ``100 Continue`` before it sends its body (once).

        Servers ask before reading more of a request that has begun, once every request before it
        is answered (a 100 for a pipelined request would read as one for the request in hand): a
        client sending ``Expect: 100-continue`` (curl for large bodies, .NET, some SDKs) otherwise
        waits a second or so before sending the body. A request refused from its head (413 by
        Content-Length) never gets here: its refusal comes first.
        """
        if self.continued or not self.started or self.body_size or "expect" not in self.headers:
            return False
        self.continued = True
        return self.headers["expect"].strip().lower() == "100-continue"


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
"""The interim response to ``Expect: 100-continue``."""


def _too_large(limits: Limits) -> Response:
    return error_response(
        413, "body_too_large", f"the request body is larger than {limits.max_body_bytes} bytes"
    )


def _decompress(encoding: str, body: bytes, limits: Limits) -> bytes:
    encoding = encoding.strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(
            error_response(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip")
        )
    wbits = 47 if encoding != "deflate" else 15  # 32+15: gzip or zlib header, detected
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, limits.max_body_bytes + 1)
    except zlib.error as exc:
        raise BadRequest(error_response(400, "bad_encoding", f"the {encoding} body is corrupt: {exc}")) from None
    if len(out) > limits.max_body_bytes or decoder.unconsumed_tail:
        raise BadRequest(_too_large(limits))
    if not decoder.eof:
        raise BadRequest(error_response(400, "bad_encoding", f"the {encoding} body is truncated"))
    return out


_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
# Header lines most responses carry, encoded once.
_HEADER_LINES = {
    ("content-type", "application/json"): b"content-type: application/json\r\n",
    ("content-type", "image/gif"): b"content-type: image/gif\r\n",
    ("cache-control", "no-cache, no-store, must-revalidate"): b"cache-control: no-cache, no-store, must-revalidate\r\n",
}


def encode_response(response: Response, keep_alive: bool) -> bytes:
    status = response.status
    head = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status
    parts = [head]
    for header in response.headers:
        line = _HEADER_LINES.get(header)
        parts.append(line if line is not None else f"{header[0]}: {header[1]}\r\n".encode("latin-1"))
    body = response.body
    if keep_alive:
        parts.append(b"content-length: %d\r\n\r\n" % len(body))
    else:
        parts.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
    parts.append(body)
    return b"".join(parts)


def timeout_response(timeout: float, retry_after: int) -> Response:
    """503 for a request not handled within ``timeout`` seconds, advising a retry after ``retry_after``."""
    return error_response(
        503,
        "timeout",
        f"the request was not handled within {timeout:g}s; retry later",
        headers=[("retry-after", str(retry_after))],
    )
