"""How streamer reaches MongoDB: the settings every MongoDB connector takes, and the client made from them.

Declared once, as annotated types (each with its description and examples) and the
:class:`MongoConnection` struct built from them. Connector specs declare the same keys with these
types (``uri: MongoUri``), as the PostgreSQL connectors do with :mod:`streamer.postgres.settings`.

Secrets: a URI may hold a password. :func:`redact_uri` masks it, :func:`describe` masks it in error
messages, and :class:`MongoConnection` prints its URI masked.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

__all__ = [
    "ConnectTimeout",
    "MongoConnection",
    "MongoUri",
    "ServerSelectionTimeout",
    "create_client",
    "describe",
    "redact_uri",
]

MongoUri = Annotated[
    str,
    msgspec.Meta(
        description="MongoDB connection string (`mongodb://` or `mongodb+srv://`); replica set, TLS and "
        "authentication options go in its query string. Give the password through an environment variable "
        "(`${MONGO_URI}`) rather than in the pipeline file; it is masked in every message.",
        examples=["mongodb://127.0.0.1:27017/?replicaSet=rs0", "${MONGO_URI}"],
    ),
]
ConnectTimeout = Annotated[
    float, msgspec.Meta(gt=0, description="Seconds allowed to open one connection.", examples=[10])
]
ServerSelectionTimeout = Annotated[
    float,
    msgspec.Meta(
        gt=0,
        description="Seconds an operation waits for a suitable server (the primary, for a change stream) "
        "before it fails; the input then retries with backoff.",
        examples=[30],
    ),
]


class MongoConnection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True):
    """How to reach one MongoDB deployment."""

    uri: MongoUri
    connect_timeout: ConnectTimeout = 10.0
    server_selection_timeout: ServerSelectionTimeout = 30.0

    def __repr__(self) -> str:
        # The URI may carry a password: a repr ends up in logs and tracebacks.
        return f"MongoConnection(uri={redact_uri(self.uri)!r})"

    @property
    def where(self) -> str:
        """The URI with its password masked, for messages."""
        return redact_uri(self.uri)


_MASK = "***"


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user info replaced by ``***``."""
    try:
        parts = urlsplit(uri)
        password = parts.password
    except ValueError:
        return "<unparseable URI>"
    if not password:
        return uri
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return uri.replace(parts.netloc, f"{user}:{_MASK}@{hosts}", 1)


def _password(uri: str) -> str | None:
    try:
        return urlsplit(uri).password or None
    except ValueError:
        return None


def describe(exc: BaseException, uri: str | None = None) -> str:
    """``Type: first line of the message``, with ``uri``'s password masked should the message quote it."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    password = _password(uri) if uri else None
    if password:
        text = text.replace(password, _MASK)
    return text


def check_connection(connection: MongoConnection) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems with connection settings, as a spec's ``check()`` reports them."""
    if not connection.uri.startswith(("mongodb://", "mongodb+srv://")):
        return [(("uri",), "`uri` must be a mongodb:// or mongodb+srv:// connection string")]
    return []


def create_client(connection: MongoConnection, **options: Any) -> Any:
    """An ``AsyncMongoClient`` for ``connection`` (pymongo >= 4.10; connects lazily, on first use).

    Dates decode as timezone-aware UTC datetimes, and dates outside Python's range as ``DatetimeMS``
    rather than failing the whole change (``datetime_conversion="datetime_auto"``).
    """
    from bson.codec_options import DatetimeConversion
    from pymongo import AsyncMongoClient

    return AsyncMongoClient(
        connection.uri,
        connectTimeoutMS=int(connection.connect_timeout * 1000),
        serverSelectionTimeoutMS=int(connection.server_selection_timeout * 1000),
        appname="streamer",
        tz_aware=True,
        datetime_conversion=DatetimeConversion.DATETIME_AUTO,
        **options,
    )
