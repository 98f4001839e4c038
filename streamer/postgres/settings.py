"""How streamer reaches PostgreSQL: the settings every PostgreSQL connector takes, and the pool made from them.

The settings are declared once here, as annotated types (each with its description and examples) and
the :class:`PostgresConnection` struct built from them. Connector specs declare the same keys with
these types (``dsn: Dsn``), so a DSN, a pool size or a TLS file is written the same way for the sink,
the schema repository and the connectors to come, and documented by one sentence. msgspec cannot
mix two structs with fields into one spec (their layouts conflict), hence types rather than a base
struct; each spec turns its keys into a :class:`PostgresConnection` and calls :func:`create_pool`.

Secrets: a DSN may hold a password. :func:`redact_dsn` masks it, :func:`describe` masks it in error
messages, and :class:`PostgresConnection` prints its DSN masked: nothing here logs or raises a
message with the password in it.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import msgspec

from streamer.core.config import PathT

__all__ = [
    "ConnectTimeout",
    "Dsn",
    "PoolMaxSize",
    "PoolMinSize",
    "PostgresConnection",
    "SslCert",
    "SslKey",
    "SslMode",
    "SslRootCert",
    "StatementTimeout",
    "check_connection",
    "check_identifier",
    "connect",
    "create_pool",
    "describe",
    "quote_identifier",
    "quote_table",
    "redact_dsn",
]

# --- the settings, declared once ------------------------------------------------------------------

Dsn = Annotated[
    str,
    msgspec.Meta(
        description="libpq connection URI. Give the password through `PGPASSWORD`, a `.pgpass` file or an "
        "environment variable (`${PG_DSN}`) rather than in the pipeline file; it is masked in every message.",
        examples=["postgresql://streamer@127.0.0.1:5432/events", "${PG_DSN}"],
    ),
]
PoolMinSize = Annotated[int, msgspec.Meta(ge=0, description="Connections opened at start and kept open.", examples=[1])]
PoolMaxSize = Annotated[
    int,
    msgspec.Meta(ge=1, description="Most connections open at once (one per batch in flight).", examples=[4]),
]
ConnectTimeout = Annotated[
    float, msgspec.Meta(gt=0, description="Seconds allowed to open one connection.", examples=[10])
]
StatementTimeout = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        description="Seconds one statement (a batch's COPY and insert) may run before the server cancels it "
        "(PostgreSQL `statement_timeout`) and the write is retried; 0: no limit.",
        examples=[30],
    ),
]
SslMode = Annotated[
    Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None,
    msgspec.Meta(
        description="TLS mode, as libpq's `sslmode`; default: the DSN's `sslmode`, else `PGSSLMODE`, else `prefer`.",
        examples=["verify-full"],
    ),
]
SslRootCert = Annotated[
    str | None,
    msgspec.Meta(
        description="CA certificate file (PEM) the server's certificate must chain to; with it, `require` "
        "verifies the chain too, as libpq does.",
        examples=["/etc/ssl/certs/db-ca.pem"],
    ),
]
SslCert = Annotated[
    str | None,
    msgspec.Meta(
        description="Client certificate file (PEM), for servers that ask for one.",
        examples=["/run/secrets/pg-client.crt"],
    ),
]
SslKey = Annotated[
    str | None,
    msgspec.Meta(description="Private key of `ssl_cert` (PEM).", examples=["/run/secrets/pg-client.key"]),
]


class PostgresConnection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, repr_omit_defaults=True):
    """How to reach one PostgreSQL database: DSN, pool, timeouts and TLS."""

    dsn: Dsn
    pool_min_size: PoolMinSize = 1
    pool_max_size: PoolMaxSize = 4
    connect_timeout: ConnectTimeout = 10.0
    statement_timeout: StatementTimeout = 30.0
    ssl_mode: SslMode = None
    ssl_root_cert: SslRootCert = None
    ssl_cert: SslCert = None
    ssl_key: SslKey = None

    def __repr__(self) -> str:
        # The DSN may carry a password: a repr ends up in logs and tracebacks.
        return f"PostgresConnection(dsn={redact_dsn(self.dsn)!r}, pool_max_size={self.pool_max_size})"

    @property
    def where(self) -> str:
        """The DSN with its password masked, for messages."""
        return redact_dsn(self.dsn)


# --- secrets ----------------------------------------------------------------------------------------

_MASK = "***"


def _password(dsn: str) -> str | None:
    try:
        parts = urlsplit(dsn)
        if parts.password:
            return parts.password
        for key, value in parse_qsl(parts.query):
            if key == "password" and value:
                return value
    except ValueError:
        pass
    return None


def redact_dsn(dsn: str) -> str:
    """``dsn`` with its password (in the user info or a ``password=`` parameter) replaced by ``***``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    if parts.password is not None and "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{_MASK}@{hosts}"
    query = re.sub(r"(^|&)password=[^&]*", rf"\1password={_MASK}", parts.query)
    out = f"{parts.scheme}://{netloc}{parts.path}"
    return f"{out}?{query}" if query else out


def describe(exc: BaseException, dsn: str | None = None) -> str:
    """``Type: first line of the message``, with ``dsn``'s password masked should the message quote it."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    password = _password(dsn) if dsn else None
    if password:
        text = text.replace(password, _MASK)
    return text


# --- identifiers --------------------------------------------------------------------------------------

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def check_identifier(name: str, what: str = "column") -> str:
    """``name`` if it is a plain SQL identifier (letters, digits, ``_``, ``$``; at most 63); else ValueError."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a {what} name: use letters, digits and _ (starting with a letter or _), at most 63"
        )
    return name


def quote_identifier(name: str, what: str = "column") -> str:
    """``name`` checked (:func:`check_identifier`) and double-quoted, so that it can go in SQL text."""
    return f'"{check_identifier(name, what)}"'


def quote_table(table: str) -> str:
    """``name`` or ``schema.name`` as a quoted SQL identifier; raises ValueError for anything else."""
    parts = table.split(".")
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise ValueError(f"{table!r} is not a table name; write name or schema.name (letters, digits, _)")
    return ".".join(f'"{p}"' for p in parts)


# --- checks and set-up -----------------------------------------------------------------------------


def check_connection(connection: PostgresConnection) -> Iterator[tuple[PathT, str]]:
    """Problems with connection settings, as a spec's ``check()`` reports them (paths are the spec's keys)."""
    if not connection.dsn.startswith(("postgresql://", "postgres://")):
        yield ("dsn",), "`dsn` must be a postgresql:// URI"
    if connection.pool_min_size > connection.pool_max_size:
        yield ("pool_min_size",), "`pool_min_size` must not exceed `pool_max_size`"
    if (connection.ssl_cert is None) != (connection.ssl_key is None):
        yield ("ssl_cert" if connection.ssl_cert is None else "ssl_key",), "give both `ssl_cert` and `ssl_key`"


def ssl_argument(connection: PostgresConnection) -> ssl.SSLContext | str | None:
    """What asyncpg's ``ssl`` argument gets: ``None`` (the DSN or environment decide), a mode, or a context
    built the way libpq reads the mode when certificate files are given."""
    mode = connection.ssl_mode
    if connection.ssl_root_cert is None and connection.ssl_cert is None:
        return mode
    if mode == "disable":
        return mode
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = mode == "verify-full"
    if connection.ssl_root_cert is not None:
        context.load_verify_locations(cafile=connection.ssl_root_cert)
        context.verify_mode = ssl.CERT_REQUIRED if mode not in ("allow", "prefer") else ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_NONE
    if connection.ssl_cert is not None and connection.ssl_key is not None:
        context.load_cert_chain(connection.ssl_cert, connection.ssl_key)
    return context


def _arguments(connection: PostgresConnection) -> dict[str, Any]:
    """What asyncpg's ``connect`` and ``create_pool`` both take from the settings."""
    server_settings = {"application_name": "streamer"}
    command_timeout = None
    if connection.statement_timeout > 0:
        server_settings["statement_timeout"] = str(int(connection.statement_timeout * 1000))
        command_timeout = connection.statement_timeout + 5  # the server cancels first, with a clearer error
    return {
        "dsn": connection.dsn,
        "timeout": connection.connect_timeout,
        "command_timeout": command_timeout,
        "ssl": ssl_argument(connection),
        "server_settings": server_settings,
    }


async def connect(connection: PostgresConnection) -> Any:
    """One asyncpg connection for ``connection`` (for checks at start, replication, ...)."""
    import asyncpg

    return await asyncpg.connect(**_arguments(connection))


async def create_pool(
    connection: PostgresConnection,
    *,
    init: Callable[[Any], Awaitable[None]] | None = None,
    reset: Callable[[Any], Awaitable[None]] | None = None,
) -> Any:
    """An asyncpg pool for ``connection`` (opened: ``pool_min_size`` connections are made now).

    The server cancels statements past ``statement_timeout`` and the client gives up on one 5 s after
    that. A pool replaces a broken connection when it is next acquired, so after a server restart the
    failed write raises and the retried one reconnects. ``init`` runs on every new connection (type
    codecs, temporary tables); ``reset``, when given, replaces asyncpg's reset of a released connection
    (``RESET ALL``, ``UNLISTEN *``, ...: a round trip per release) for users that change no session state.
    Errors are asyncpg's and the OS's: put them in messages with :func:`describe`.
    """
    import asyncpg

    return await asyncpg.create_pool(
        min_size=connection.pool_min_size,
        max_size=connection.pool_max_size,
        init=init,
        reset=reset,
        **_arguments(connection),
    )
