"""A 1,000,000-row transaction through ``streamer run``: streamed in units, the process's memory bounded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from streamer.postgres.replication import parse_lsn
from tests.cdc.conftest import Database
from tests.support import ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.services]

ROWS = 1_000_000
RSS_BOUND_MB = 200


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise LookupError("no VmHWM")


@pytest.mark.timeout(240)
async def test_a_million_row_transaction_in_bounded_memory(db: Database, tmp_path: Path) -> None:
    await db.execute("CREATE TABLE items (id int PRIMARY KEY, payload text)")
    config = tmp_path / "pipeline.yml"
    config.write_text(f"""
name: cdc-large
inputs:
  db: {{type: postgres_cdc, dsn: "{db.dsn}", tables: [public.items], slot: large, publication: large, create: true,
       chunk_size: 1000, max_in_flight: 16, status_interval: 0.5}}
sinks:
  out: {{type: blackhole, route: all}}
""")
    with (tmp_path / "log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(config)],
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
    try:
        with anyio.fail_after(30):
            while await db.value("SELECT count(*) FROM pg_replication_slots WHERE active") != "1":
                assert process.poll() is None, (tmp_path / "log").read_text()
                await anyio.sleep(0.1)
        started = time.monotonic()
        await db.execute(f"INSERT INTO items SELECT g, repeat('x', 90) FROM generate_series(1, {ROWS}) g")
        end = parse_lsn(str(await db.value("SELECT pg_current_wal_lsn()")))
        inserted = time.monotonic() - started
        with anyio.fail_after(180):
            while await db.confirmed_flush("large") < end:  # every unit settled, then a keepalive
                assert process.poll() is None, (tmp_path / "log").read_text()
                await anyio.sleep(0.2)
        streamed = time.monotonic() - started - inserted
        peak = peak_rss_mb(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    print(f"rows={ROWS} insert={inserted:.1f}s stream={streamed:.1f}s ({ROWS / streamed:,.0f}/s) peak_rss={peak:.0f}MB")
    assert b"changes=1000000" in (tmp_path / "log").read_bytes()
    assert peak < RSS_BOUND_MB
