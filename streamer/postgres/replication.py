"""A small PostgreSQL client for logical replication, on anyio TCP streams (asyncio and trio).

asyncpg cannot run ``START_REPLICATION`` (its extended query protocol is refused on a replication
connection) and psycopg 3 has no replication API, so the ``postgres_cdc`` input speaks the protocol
itself. Only what it needs is here:

- the frontend/backend protocol v3 start-up, with ``replication=database`` or as a normal session,
  and authentication by trust, cleartext password, MD5 or SCRAM-SHA-256 (no channel binding);
- the simple query protocol (``IDENTIFY_SYSTEM``, ``CREATE_REPLICATION_SLOT``, ``SELECT``, cursors),
  every value in text form;
- ``START_REPLICATION ... LOGICAL`` and the CopyBoth stream that follows it: XLogData and primary
  keepalive messages in, standby status updates out.

TLS is not implemented: connect over a trusted network or a local socket tunnel (the connection is
refused with a clear message when the DSN asks for ``sslmode=require`` or stricter).

Errors: :class:`PgError` is an ``ErrorResponse`` from the server (its SQLSTATE in ``code``);
:class:`PgConnectionError` is anything that prevents talking to it (refused, closed, timed out, an
authentication method this client does not speak).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import anyio.abc

__all__ = [
    "PG_EPOCH_US",
    "ConnectParams",
    "PgConnection",
    "PgConnectionError",
    "PgError",
    "QueryResult",
    "format_lsn",
    "parse_lsn",
]

PG_EPOCH_US = 946_684_800_000_000
"""2000-01-01 in microseconds since the Unix epoch: replication timestamps count from there."""

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!i")
_STATUS = struct.Struct("!cQQQqB")
_XLOG_HEADER = struct.Struct("!QQq")
_KEEPALIVE = struct.Struct("!QqB")


def parse_lsn(text: str) -> int:
    """``"16/B374D848"`` -> an integer LSN."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """An integer LSN -> ``"16/B374D848"``, the form PostgreSQL prints."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


class PgError(Exception):
    """An ErrorResponse: ``code`` is the SQLSTATE, ``fields`` every field the server sent."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.code = fields.get("C", "")
        self.message = fields.get("M", "")
        super().__init__(f"{fields.get('S', 'ERROR')}: {self.message} (SQLSTATE {self.code})")


class PgConnectionError(Exception):
    """The server cannot be reached or talked to (refused, closed, timed out, unsupported auth)."""


@dataclass(frozen=True)
class ConnectParams:
    host: str
    port: int
    user: str
    password: str | None
    database: str
    sslmode: str | None

    @classmethod
    def from_dsn(cls, dsn: str) -> ConnectParams:
        """Host, port, user, password and database of a ``postgresql://`` URI, with libpq's environment
        defaults (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``, ``PGSSLMODE``)."""
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        env = os.environ
        host = query.get("host") or (unquote(parts.hostname) if parts.hostname else None) or env.get("PGHOST")
        if not host or host.startswith("/"):
            host = host or "127.0.0.1"
        user = query.get("user") or (unquote(parts.username) if parts.username else None) or env.get("PGUSER")
        user = user or "postgres"
        password = query.get("password") or (unquote(parts.password) if parts.password else None)
        password = password or env.get("PGPASSWORD")
        database = query.get("dbname") or unquote(parts.path.lstrip("/")) or env.get("PGDATABASE") or user
        port = int(query.get("port") or parts.port or env.get("PGPORT") or 5432)
        sslmode = query.get("sslmode") or env.get("PGSSLMODE")
        return cls(host, port, user, password, database, sslmode)

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass
class QueryResult:
    """One statement's result: column names, type OIDs, rows of text values (``None`` for NULL)."""

    columns: list[str]
    types: list[int]
    rows: list[list[str | None]]
    command: str

    def first(self) -> list[str | None]:
        if not self.rows:
            raise PgConnectionError(f"expected a row from {self.command or 'the query'}, got none")
        return self.rows[0]


class PgConnection:
    """One connection, on an anyio byte stream. Not safe for concurrent queries; in CopyBoth mode one
    task may read (:meth:`read_copy_data`) while another sends (:meth:`send_status`)."""

    def __init__(self, stream: anyio.abc.ByteStream, params: ConnectParams) -> None:
        self._stream = stream
        self.params = params
        self._buffer = bytearray()
        self._send_lock = anyio.Lock()
        self.server_parameters: dict[str, str] = {}
        self.notices: list[str] = []
        self.copy_done = False

    # --- connecting ---------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls, dsn: str, *, replication: bool = False, timeout: float = 10.0, application_name: str = "streamer"
    ) -> PgConnection:
        """Connect and authenticate; ``replication=True`` opens a logical replication session
        (``replication=database``), in which both replication commands and SQL are accepted."""
        params = ConnectParams.from_dsn(dsn)
        if params.sslmode in ("require", "verify-ca", "verify-full"):
            raise PgConnectionError(
                f"sslmode={params.sslmode}: TLS is not supported by the replication client; "
                "connect over a trusted network (sslmode=disable or prefer)"
            )
        try:
            with anyio.fail_after(timeout):
                if params.host.startswith("/"):
                    stream: anyio.abc.ByteStream = await anyio.connect_unix(f"{params.host}/.s.PGSQL.{params.port}")
                else:
                    stream = await anyio.connect_tcp(params.host, params.port)
                connection = cls(stream, params)
                try:
                    await connection._startup(replication, application_name)
                except BaseException:
                    await connection.aclose()
                    raise
        except TimeoutError as exc:
            raise PgConnectionError(f"timed out connecting to {params.where} after {timeout:g} s") from exc
        except OSError as exc:
            raise PgConnectionError(f"cannot connect to {params.where}: {exc}") from exc
        return connection

    async def _startup(self, replication: bool, application_name: str) -> None:
        settings = {
            "user": self.params.user,
            "database": self.params.database,
            "application_name": application_name,
            "client_encoding": "UTF8",
            # Value formats the decoder relies on: ISO dates in UTC, exact floats, hex bytea.
            "DateStyle": "ISO, YMD",
            "TimeZone": "UTC",
            "IntervalStyle": "iso_8601",
            "extra_float_digits": "3",
            "bytea_output": "hex",
        }
        if replication:
            settings["replication"] = "database"
        body = _INT32.pack(196608) + b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in settings.items())
        body += b"\0"
        await self._stream.send(_INT32.pack(len(body) + 4) + body)
        scram: _Scram | None = None
        while True:
            kind, data = await self._read_message()
            if kind == b"R":
                (code,) = _INT32.unpack_from(data)
                if code == 0:  # AuthenticationOk
                    continue
                password = self.params.password
                if code in (3, 5, 10) and password is None:
                    raise PgConnectionError(
                        f"{self.params.where} asks for a password; give it in the DSN or PGPASSWORD"
                    )
                assert password is not None or code not in (3, 5, 10)
                if code == 3:  # cleartext
                    await self._send(b"p", (password or "").encode() + b"\0")
                elif code == 5:  # MD5
                    salt = bytes(data[4:8])
                    inner = hashlib.md5((password or "").encode() + self.params.user.encode()).hexdigest()
                    digest = "md5" + hashlib.md5(inner.encode() + salt).hexdigest()
                    await self._send(b"p", digest.encode() + b"\0")
                elif code == 10:  # SASL: the list of mechanisms
                    mechanisms = bytes(data[4:]).split(b"\0")
                    if b"SCRAM-SHA-256" not in mechanisms:
                        raise PgConnectionError(f"no supported SASL mechanism among {mechanisms!r}")
                    scram = _Scram(password or "")
                    first = scram.client_first()
                    await self._send(b"p", b"SCRAM-SHA-256\0" + _INT32.pack(len(first)) + first)
                elif code == 11 and scram is not None:  # SASLContinue
                    await self._send(b"p", scram.client_final(bytes(data[4:])))
                elif code == 12 and scram is not None:  # SASLFinal
                    scram.verify(bytes(data[4:]))
                else:
                    raise PgConnectionError(f"authentication method {code} is not supported")
            elif kind == b"S":
                name, value, _ = bytes(data).split(b"\0", 2)
                self.server_parameters[name.decode()] = value.decode()
            elif kind == b"K":
                continue
            elif kind == b"Z":
                return
            elif kind == b"E":
                raise PgError(_fields(data))
            elif kind == b"N":
                continue

    @property
    def server_version(self) -> int:
        """``server_version_num``-style: 150020 for 15.20."""
        text = self.server_parameters.get("server_version", "0").split()[0]
        numbers = [int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")]
        major = numbers[0]
        minor = numbers[1] if len(numbers) > 1 else 0
        return major * 10000 + minor if major >= 10 else major * 10000 + minor * 100

    async def aclose(self) -> None:
        """Send Terminate (when possible) and close the socket."""
        try:
            with anyio.move_on_after(1):
                async with self._send_lock:
                    await self._stream.send(b"X\0\0\0\4")
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        await self._stream.aclose()

    # --- the wire ---------------------------------------------------------------------------------------

    async def _send(self, kind: bytes, body: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send(kind + _INT32.pack(len(body) + 4) + body)
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise PgConnectionError(f"connection to {self.params.where} lost: {exc}") from exc

    async def _receive(self) -> None:
        try:
            data = await self._stream.receive(262144)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream) as exc:
            raise PgConnectionError(f"connection to {self.params.where} lost: {exc!r}") from exc
        self._buffer += data

    async def _read_message(self) -> tuple[bytes, memoryview]:
        buffer = self._buffer
        while len(buffer) < 5:
            await self._receive()
        kind, length = _HEADER.unpack_from(buffer)
        while len(buffer) < length + 1:
            await self._receive()
        data = bytes(buffer[5 : length + 1])
        del buffer[: length + 1]
        return kind, memoryview(data)

    # --- simple queries ---------------------------------------------------------------------------------

    async def query(self, sql: str) -> list[QueryResult]:
        """Run ``sql`` (one or more statements) with the simple query protocol; the result of each."""
        await self._send(b"Q", sql.encode() + b"\0")
        results: list[QueryResult] = []
        current: QueryResult | None = None
        error: PgError | None = None
        while True:
            kind, data = await self._read_message()
            if kind == b"T":
                current = QueryResult(*_row_description(data), rows=[], command="")
            elif kind == b"D":
                assert current is not None
                current.rows.append(_data_row(data))
            elif kind == b"C":
                command = bytes(data[:-1]).decode()
                if current is None:
                    current = QueryResult([], [], [], command)
                current.command = command
                results.append(current)
                current = None
            elif kind == b"I":
                results.append(QueryResult([], [], [], ""))
            elif kind == b"E":
                error = PgError(_fields(data))
            elif kind == b"N":
                self.notices.append(_fields(data).get("M", ""))
            elif kind == b"S":
                name, value, _ = bytes(data).split(b"\0", 2)
                self.server_parameters[name.decode()] = value.decode()
            elif kind == b"Z":
                if error is not None:
                    raise error
                return results
            elif kind in (b"H", b"W"):
                raise PgConnectionError("unexpected COPY in a simple query")

    async def execute(self, sql: str) -> QueryResult:
        """Run one statement; its result."""
        results = await self.query(sql)
        return results[-1] if results else QueryResult([], [], [], "")

    # --- replication ------------------------------------------------------------------------------------

    async def start_replication(self, command: str) -> None:
        """Send ``START_REPLICATION ...`` and wait for the CopyBoth response (or the error)."""
        await self._send(b"Q", command.encode() + b"\0")
        while True:
            kind, data = await self._read_message()
            if kind == b"W":
                return
            if kind == b"E":
                error = PgError(_fields(data))
                while kind != b"Z":  # drain to ReadyForQuery
                    kind, data = await self._read_message()
                raise error
            if kind == b"N":
                self.notices.append(_fields(data).get("M", ""))

    async def read_copy_data(self) -> list[bytes]:
        """The CopyData payloads that are complete in the buffer after (at most) one receive; at least one.

        One receive usually holds many messages: they are cut out of the buffer together, with one
        deletion from its front. Returns ``[]`` once the server ended the copy (CopyDone); raises
        :class:`PgError` on an ErrorResponse.
        """
        buffer = self._buffer
        out: list[bytes] = []
        unpack = _HEADER.unpack_from
        while True:
            position = 0
            size = len(buffer)
            while size - position >= 5:
                kind, length = unpack(buffer, position)
                end = position + 1 + length
                if end > size:
                    break
                if kind == b"d":
                    out.append(bytes(buffer[position + 5 : end]))
                elif kind == b"c":
                    self.copy_done = True
                elif kind == b"E":
                    fields = _fields(memoryview(bytes(buffer[position + 5 : end])))
                    del buffer[:end]
                    raise PgError(fields)
                # 'N' notices, 'S' parameter changes and the end of the command are ignored here.
                position = end
            if position:
                del buffer[:position]
            if out or self.copy_done:
                return out
            await self._receive()

    async def send_status(self, lsn: int, *, reply: bool = False) -> None:
        """Standby status update: written, flushed and applied up to ``lsn`` (what the slot may confirm)."""
        now = int(time.time() * 1_000_000) - PG_EPOCH_US
        await self._send(b"d", _STATUS.pack(b"r", lsn, lsn, lsn, now, 1 if reply else 0))

    async def end_copy(self) -> None:
        """Send CopyDone, ending the replication stream (the server answers CopyDone, then ReadyForQuery)."""
        await self._send(b"c", b"")


def parse_xlog(payload: bytes) -> tuple[int, int, int]:
    """``(wal_start, wal_end, send_time)`` of an XLogData payload (its message starts at offset 25)."""
    start, end, sent = _XLOG_HEADER.unpack_from(payload, 1)
    return start, end, sent


def parse_keepalive(payload: bytes) -> tuple[int, bool]:
    """``(wal_end, reply_requested)`` of a primary keepalive payload."""
    end, _sent, reply = _KEEPALIVE.unpack_from(payload, 1)
    return end, bool(reply)


# --- message bodies -------------------------------------------------------------------------------------


def _fields(data: memoryview) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in bytes(data).split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return fields


def _row_description(data: memoryview) -> tuple[list[str], list[int]]:
    raw = bytes(data)
    (count,) = struct.unpack_from("!h", raw)
    position = 2
    names: list[str] = []
    types: list[int] = []
    for _ in range(count):
        end = raw.index(b"\0", position)
        names.append(raw[position:end].decode())
        _table, _column, type_oid, _size, _modifier, _format = struct.unpack_from("!IhIhih", raw, end + 1)
        types.append(type_oid)
        position = end + 1 + 18
    return names, types


def _data_row(data: memoryview) -> list[str | None]:
    raw = bytes(data)
    (count,) = struct.unpack_from("!h", raw)
    position = 2
    values: list[str | None] = []
    for _ in range(count):
        (length,) = _INT32.unpack_from(raw, position)
        position += 4
        if length < 0:
            values.append(None)
        else:
            values.append(raw[position : position + length].decode())
            position += length
    return values


# --- SCRAM-SHA-256 (RFC 5802 / 7677), without channel binding ------------------------------------------


class _Scram:
    def __init__(self, password: str) -> None:
        self._password = password.encode()  # SASLprep is skipped: ASCII passwords are unaffected by it
        self._nonce = base64.b64encode(os.urandom(18)).decode()
        self._client_first_bare = f"n=,r={self._nonce}"
        self._server_signature = b""

    def client_first(self) -> bytes:
        return f"n,,{self._client_first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        attributes = dict(_scram_attributes(server_first.decode()))
        nonce = attributes["r"]
        if not nonce.startswith(self._nonce):
            raise PgConnectionError("SCRAM: the server's nonce does not extend ours")
        salt = base64.b64decode(attributes["s"])
        iterations = int(attributes["i"])
        salted = hashlib.pbkdf2_hmac("sha256", self._password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self._client_first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attributes = dict(_scram_attributes(server_final.decode()))
        if "e" in attributes:
            raise PgConnectionError(f"SCRAM: the server refused: {attributes['e']}")
        if not hmac.compare_digest(base64.b64decode(attributes.get("v", "")), self._server_signature):
            raise PgConnectionError("SCRAM: the server's signature does not match (not the real server?)")


def _scram_attributes(message: str) -> Iterator[tuple[str, str]]:
    for part in message.split(","):
        key, _, value = part.partition("=")
        yield key, value


def quote_literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + value.replace("'", "''") + "'"
