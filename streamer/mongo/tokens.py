"""Where a change stream's resume token is kept between runs: a file, or a row of a PostgreSQL table.

What is saved is a :class:`ResumeState`: the resume token after which the stream continues and, when
an initial snapshot was asked for, whether it finished. The input saves one only once every change
before it is held by the required sinks (the ordered checkpoint), so a restart resumes after the last
acknowledged change: what was read after it is read again (same event ids), nothing is skipped.

The token itself is stored as canonical Extended JSON, which gives back the exact BSON value
whatever the server put in it (``{"_data": "8263..."}`` on current servers).

Errors raised here (:class:`TokenStoreError`) say which file or table, what is wrong and what the
choices are; a store that cannot be read never silently means "start from now".
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import anyio
import msgspec

from streamer.core.config import PathT
from streamer.postgres.settings import (
    ConnectTimeout,
    PostgresConnection,
    SslMode,
    SslRootCert,
    describe,
    quote_table,
)

__all__ = [
    "FileTokenStore",
    "PostgresTokenStore",
    "ResumeState",
    "TokenStore",
    "TokenStoreError",
    "TokenStoreSpec",
    "open_token_store",
]

log = logging.getLogger("streamer")

Snapshot = Literal["in_progress", "done"]

_CHOICES = (
    "Choose: restore it from a backup; or delete it to start from `start_at_operation_time` or from now "
    "(changes made since the last saved token are then skipped); or delete it and set `snapshot: initial` "
    "to read the whole collection again"
)


class TokenStoreError(Exception):
    """The saved resume token cannot be read or written; the message names the store and the choices."""


class ResumeState(msgspec.Struct, frozen=True, kw_only=True):
    """Where a stream resumes: after ``token``; ``snapshot`` is the initial snapshot's state, if any."""

    token: dict[str, Any]
    """The resume token (a change's ``_id`` or a batch's ``postBatchResumeToken``), as pymongo decoded it."""
    snapshot: Snapshot | None = None
    """``in_progress``: the stream starts at ``token`` but the snapshot did not finish (it is read again);
    ``done``: it finished; ``None``: no snapshot was asked for."""


class _Stored(msgspec.Struct, kw_only=True):
    """The JSON document a store holds."""

    format: int
    key: str
    token: Any
    snapshot: Snapshot | None = None
    saved_at: str | None = None


def encode_state(state: ResumeState, key: str) -> bytes:
    from bson import json_util

    token = msgspec.json.decode(json_util.dumps(state.token, json_options=json_util.CANONICAL_JSON_OPTIONS))
    stored = _Stored(format=1, key=key, token=token, snapshot=state.snapshot, saved_at=datetime.now(UTC).isoformat())
    return msgspec.json.encode(stored) + b"\n"


def decode_state(data: bytes | str, where: str) -> ResumeState:
    """The state in ``data``; :class:`TokenStoreError` naming ``where`` when it is not a saved state."""
    from bson import json_util

    try:
        stored = msgspec.json.decode(data, type=_Stored)
        if stored.format != 1:
            raise ValueError(f"unknown format {stored.format}")
        token = json_util.loads(msgspec.json.encode(stored.token))
        if not isinstance(token, dict) or not token:
            raise ValueError("`token` is not a resume token document")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
        raise TokenStoreError(f"the saved resume token in {where} is corrupt ({exc}). {_CHOICES}.") from None
    return ResumeState(token=dict(token), snapshot=stored.snapshot)


class TokenStore(Protocol):
    """Loads and saves one stream's :class:`ResumeState`."""

    where: str
    """The file or table (and key), for messages."""

    async def load(self) -> ResumeState | None:
        """The saved state; ``None`` when nothing was ever saved. Raises :class:`TokenStoreError`."""
        ...

    async def save(self, state: ResumeState) -> None:
        """Replace the saved state; returns once it is durable."""
        ...

    async def aclose(self) -> None: ...


# --- file ---------------------------------------------------------------------------------------


class FileTokenStore:
    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.where = f"the file {path}"

    async def load(self) -> ResumeState | None:
        return await anyio.to_thread.run_sync(self._load)

    def _load(self) -> ResumeState | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise TokenStoreError(f"cannot read the resume token file {self.path}: {exc}") from None
        return decode_state(data, self.where)

    async def save(self, state: ResumeState) -> None:
        data = encode_state(state, self.key)
        await anyio.to_thread.run_sync(self._save, data)

    def _save(self, data: bytes) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        # The same directory, so that the rename is atomic; a crash leaves the old file or the new one.
        fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        # The rename is durable only once the directory entry is.
        directory_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)

    async def aclose(self) -> None:
        pass


# --- postgres -----------------------------------------------------------------------------------


class TokenStoreSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where a stream's resume token is saved: a local file, replaced atomically (temporary file, fsync,
    rename, fsync of the directory), or a row of a PostgreSQL table (created when missing), upserted in its
    own transaction."""

    type: Annotated[
        Literal["file", "postgres"],
        msgspec.Meta(description="`file` (give `path`) or `postgres` (give `dsn`; `table` and `key` optional)."),
    ]
    path: Annotated[
        str | None,
        msgspec.Meta(
            description="`file`: the file; its directory is created. One file per stream: two inputs must not "
            "share it.",
            examples=["state/orders.resume.json"],
        ),
    ] = None
    dsn: Annotated[
        str | None,
        msgspec.Meta(
            description="`postgres`: libpq connection URI (as the postgres sink's `dsn`; the password is masked "
            "in every message).",
            examples=["${POSTGRES_DSN}"],
        ),
    ] = None
    table: Annotated[
        str,
        msgspec.Meta(
            description="`postgres`: the table, `name` or `schema.name` (created if missing: `stream text "
            "primary key, token text, snapshot text, saved_at timestamptz`).",
            examples=["streamer_resume_tokens"],
        ),
    ] = "streamer_resume_tokens"
    key: Annotated[
        str | None,
        msgspec.Meta(
            description="`postgres`: the row's `stream` value; default `<pipeline>/<input>`. Two inputs must not "
            "share one.",
            examples=["app.orders"],
        ),
    ] = None
    connect_timeout: ConnectTimeout = 10.0
    ssl_mode: SslMode = None
    ssl_root_cert: SslRootCert = None

    def check(self, at: PathT = ()) -> list[tuple[PathT, str]]:
        problems: list[tuple[PathT, str]] = []
        if self.type == "file":
            if not self.path:
                problems.append(((*at, "path"), "a `file` token store needs `path`"))
            if self.dsn is not None:
                problems.append(((*at, "dsn"), "`dsn` is for a `postgres` token store: remove it, or `type: postgres`"))
        else:
            if not self.dsn:
                problems.append(((*at, "dsn"), "a `postgres` token store needs `dsn`"))
            elif not self.dsn.startswith(("postgresql://", "postgres://")):
                problems.append(((*at, "dsn"), "`dsn` must be a postgresql:// URI"))
            if self.path is not None:
                problems.append(((*at, "path"), "`path` is for a `file` token store; remove it or set `type: file`"))
            try:
                quote_table(self.table)
            except ValueError as exc:
                problems.append(((*at, "table"), str(exc)))
        return problems


class PostgresTokenStore:
    """One asyncpg connection (from :mod:`streamer.postgres.settings`), opened on first use and again after
    a failure."""

    def __init__(self, spec: TokenStoreSpec, key: str) -> None:
        self.spec = spec
        self.key = key
        self.table = quote_table(spec.table)
        assert spec.dsn is not None
        self.connection = PostgresConnection(
            dsn=spec.dsn,
            connect_timeout=spec.connect_timeout,
            ssl_mode=spec.ssl_mode,
            ssl_root_cert=spec.ssl_root_cert,
            pool_min_size=1,
            pool_max_size=1,
        )
        self.where = f"the table {spec.table} (stream {key!r}) of {self.connection.where}"
        self._conn: Any = None
        self._lock = anyio.Lock()

    async def _connect(self) -> Any:
        if self._conn is None or self._conn.is_closed():
            from streamer.postgres.settings import connect

            conn = await connect(self.connection)
            try:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.table} ("
                    "stream text PRIMARY KEY, token text NOT NULL, snapshot text, "
                    "saved_at timestamptz NOT NULL DEFAULT now())"
                )
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def load(self) -> ResumeState | None:
        try:
            conn = await self._connect()
            row = await conn.fetchrow(f"SELECT token FROM {self.table} WHERE stream = $1", self.key)
        except Exception as exc:
            raise TokenStoreError(
                f"cannot read the resume token from {self.where}: {describe(exc, self.connection.dsn)}"
            ) from None
        if row is None:
            return None
        return decode_state(row["token"], self.where)

    async def save(self, state: ResumeState) -> None:
        # The whole stored document goes in `token` (it names its format); `snapshot` is a copy for people.
        data = encode_state(state, self.key).decode()
        async with self._lock:  # one connection: one statement at a time
            try:
                conn = await self._connect()
                await conn.execute(
                    f"INSERT INTO {self.table} (stream, token, snapshot, saved_at) VALUES ($1, $2, $3, now()) "
                    "ON CONFLICT (stream) DO UPDATE SET token = excluded.token, snapshot = excluded.snapshot, "
                    "saved_at = excluded.saved_at",
                    self.key,
                    data,
                    state.snapshot,
                )
            except Exception as exc:
                await self._drop()
                raise TokenStoreError(
                    f"cannot save the resume token to {self.where}: {describe(exc, self.connection.dsn)}"
                ) from None
            except BaseException:
                # Cancelled mid-statement: the connection's state is unknown; the next save opens another.
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=2)
                except Exception:
                    conn.terminate()

    async def aclose(self) -> None:
        await self._drop()


def open_token_store(spec: TokenStoreSpec, key: str, base_dir: Path) -> TokenStore:
    """The store ``spec`` describes (checked by :meth:`TokenStoreSpec.check`); ``key`` names the stream."""
    if spec.type == "file":
        assert spec.path is not None
        path = Path(spec.path)
        return FileTokenStore(path if path.is_absolute() else base_dir / path, key)
    return PostgresTokenStore(spec, spec.key or key)
