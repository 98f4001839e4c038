"""A MongoDB wire-protocol server for the tests: nx-27017 (PyPI) on a file database, on a free port.

nx-27017 answers pymongo's change streams (collection-level, with resume tokens it keeps in its SQLite
file), so the input runs against a real server process rather than a mock. A file database is needed:
with ``--db memory`` a resume after a server restart returns nothing. What it does not do like MongoDB
(no replace/drop/rename/invalidate events, no updateDescription, no oplog to roll over) is listed in
docs/inputs.md.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import need_service, port_open


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # pymongo's AsyncMongoClient is asyncio-only, and so is the input


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nx_command() -> list[str] | None:
    if importlib.util.find_spec("nx_27017") is None or importlib.util.find_spec("pymongo") is None:
        return None
    script = Path(sys.executable).parent / "nx-27017"
    return [str(script)] if script.exists() else ([found] if (found := shutil.which("nx-27017")) else None)


@dataclass
class NxServer:
    """One nx-27017 process; :meth:`restart` keeps its database file and port."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        command = _nx_command()
        assert command is not None
        self.process = subprocess.Popen(
            [
                *command,
                "--db", str(self.directory / "nx.db"),
                "--host", "127.0.0.1",
                "-p", str(self.port),
                "--log-file", str(self.directory / "nx.log"),
                "--pid-file", str(self.directory / "nx.pid"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"nx-27017 did not start; see {self.directory / 'nx.log'}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()


@pytest.fixture
def nx(tmp_path: Path) -> Iterator[NxServer]:
    need_service(
        _nx_command() is not None,
        "nx-27017 (a MongoDB wire-protocol server) and pymongo",
        "pip install 'streamer[test,mongo]' (nx-27017 and pymongo>=4.10)",
    )
    directory = tmp_path / "nx"
    directory.mkdir()
    server = NxServer(directory, free_port())
    server.start()
    try:
        yield server
    finally:
        server.kill()


