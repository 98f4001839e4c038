"""PostgreSQL for the postgres package's tests: the local server, a throwaway cluster, a TCP proxy.

The local server (127.0.0.1:5432, database ``test``, user ``postgres``, trust auth) is shared with other
tests and never stopped. Tests that stop a server use :class:`Cluster`: ``initdb`` + ``pg_ctl`` in a
temporary directory, on a free port, as the ``postgres`` user (the tests run as root) or as the
current user otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import free_port
from tests.support import need_service

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncpg


@pytest.fixture
async def table(db: Any) -> AsyncIterator[str]:
    """A fresh table name, dropped after the test."""
    name = f"events_test_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{name}"')


class Cluster:
    """A throwaway PostgreSQL cluster that a test may stop and start."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self._as_postgres = os.geteuid() == 0

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        self._run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "30",
            "-o", f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    need_service((PG_BIN / "initdb").exists(), "initdb and pg_ctl", f"install PostgreSQL server binaries in {PG_BIN}")
    root = Path(tempfile.mkdtemp(prefix="streamer-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = Cluster(root, free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(root, ignore_errors=True)


