"""Requests and responses as the server hands them to route handlers."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import msgspec

__all__ = ["JSON_CONTENT_TYPE", "Request", "Response", "error_response", "json_response"]

_json_encode = msgspec.json.Encoder().encode

JSON_CONTENT_TYPE = ("content-type", "application/json")


class Request:
    """One parsed request with its whole (decompressed) body."""

    __slots__ = ("_query", "body", "client", "headers", "method", "path", "query_string")

    def __init__(
        self,
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        client: tuple[str, int],
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        """Lower-cased names; repeated headers joined with ``, `` (``cookie`` with ``; ``)."""
        self.body = body
        self.client = client
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, decoded; the last one wins when a name repeats."""
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased (``application/json``)."""
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int = 200, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else []


def json_response(status: int, content: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, _json_encode(content), [JSON_CONTENT_TYPE, *headers] if headers else [JSON_CONTENT_TYPE])


def error_response(
    status: int, error: str, message: str, *, headers: list[tuple[str, str]] | None = None, **details: Any
) -> Response:
    """A JSON error body: ``{"error": <machine-readable kind>, "message": <sentence>, ...}``."""
    return json_response(status, {"error": error, "message": message, **details}, headers)
