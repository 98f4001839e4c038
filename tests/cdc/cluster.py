"""A throwaway PostgreSQL cluster with ``wal_level=logical``, for the CDC tests and benchmark.

The machine's PostgreSQL runs with ``wal_level=replica``; logical decoding needs its own cluster.
:func:`start_cluster` runs ``initdb`` and ``pg_ctl`` as the ``postgres`` user (through ``runuser``
when this process is root) in a temporary directory, on a free port, with trust authentication for
local TCP connections, replication ones included. It is ready in 1-2 s.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["BIN", "Cluster", "cluster_available", "start_cluster"]

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def cluster_available() -> tuple[bool, str]:
    """Whether this machine can start a throwaway cluster, and why not."""
    if not (BIN / "initdb").exists():
        return False, f"no initdb in {BIN} (install postgresql-15 or set PG_BIN)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return False, "running as root without runuser"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return False, "no postgres user to run initdb as"
    return True, ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """A running throwaway cluster; :meth:`stop` removes it."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` with psql (autocommit, stop on error); return its unaligned output."""
        result = subprocess.run(
            [
                str(BIN / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PGPASSWORD": "secret"},
        )
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def set_hba(self, method: str) -> None:
        """Authenticate local TCP connections (replication too) with ``method``, then reload."""
        lines = [
            f"host all all 127.0.0.1/32 {method}",
            f"host replication all 127.0.0.1/32 {method}",
            "local all all trust",
        ]
        (self.data / "pg_hba.conf").write_text("\n".join(lines) + "\n")
        subprocess.run(
            self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "reload"), check=True, capture_output=True
        )
        time.sleep(0.2)

    def stop(self) -> None:
        subprocess.run(
            self._as_postgres(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"),
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(**settings: str) -> Cluster:
    """initdb + start on a free port with wal_level=logical; ``settings`` are extra ``-c`` options."""
    root = Path(tempfile.mkdtemp(prefix="streamer-cdc-"))
    os.chmod(root, 0o777)
    cluster = Cluster(root, _free_port())
    as_postgres = cluster._as_postgres
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        as_postgres(
            str(BIN / "initdb"), "-D", str(cluster.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"
        ),
        check=True,
        capture_output=True,
    )
    options = {
        "wal_level": "logical",
        "max_replication_slots": "10",
        "max_wal_senders": "10",
        "listen_addresses": "127.0.0.1",
        "port": str(cluster.port),
        "unix_socket_directories": str(root),
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_buffers": "128MB",
        "max_wal_size": "2GB",
        **settings,
    }
    opts = " ".join(f"-c {key}={value}" for key, value in options.items())
    (cluster.data / "pg_hba.conf").write_text(
        "host all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\nlocal all all trust\n"
    )
    subprocess.run(
        as_postgres(
            str(BIN / "pg_ctl"), "-D", str(cluster.data), "-l", str(root / "log"), "-o", opts, "-w", "-t", "30", "start"
        ),
        check=True,
        capture_output=True,
    )
    return cluster
