"""postgres_cdc throughput: changes/s from a logical replication slot into a file, beside a raw drain.

Usage::

    .venv/bin/python benchmarks/postgres_cdc.py                    # 500,000 rows in 1,000-row transactions
    .venv/bin/python benchmarks/postgres_cdc.py --rows 1000000 --transaction 1000000 --rounds 3

It starts a throwaway cluster (``wal_level=logical``, see tests/cdc/cluster.py), creates a table of
100-byte rows, a publication and a slot, and inserts ``--rows`` rows (insert-heavy). Then, pinned to one
core (``taskset -c 0``), each round:

1. **raw drain**: a hand-written loop on streamer's replication client reads the slot to the end
   (START_REPLICATION, CopyData cut out of the buffer, the pgoutput message kind looked at, inserts
   counted, nothing decoded into values) and disconnects without confirming anything, so the slot is
   unchanged for the next reader;
2. **streamer**: ``streamer run`` on a ``postgres_cdc -> file`` pipeline (default processors: decode,
   validate against the built-in change schema, annotate) reads the same slot; the rate is counted from
   "replication started" in its log to the slot's ``confirmed_flush_lsn`` reaching the end of the WAL
   (every change written to the file and confirmed); then the slot is put back (re-created at its start
   by copying a spare slot made at the same point) for the next round.

It prints changes/s for both, the ratio (target >= 0.5) and streamer's CPU time per change.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from streamer.postgres.replication import PgConnection, parse_lsn  # noqa: E402
from tests.cdc.cluster import Cluster, start_cluster  # noqa: E402

PIPELINE = """
name: bench-cdc
inputs:
  db:
    type: postgres_cdc
    dsn: {dsn}
    tables: [public.bench]
    slot: bench
    publication: bench
    chunk_size: {chunk}
    max_in_flight: 16
    status_interval: 0.2
{processors}
sinks:
  out: {sink}
"""
FILE_SINK = "{type: file, path: out/changes.jsonl, route: all}"


async def sql(dsn: str, text: str) -> list[list[str | None]]:
    connection = await PgConnection.connect(dsn)
    try:
        results = await connection.query(text)
    finally:
        await connection.aclose()
    return results[-1].rows if results else []


async def raw_drain(dsn: str, end: int) -> tuple[int, float, float]:
    """Read slot ``bench`` up to ``end``; (inserts seen, seconds, CPU seconds)."""
    connection = await PgConnection.connect(dsn, replication=True)
    try:
        await connection.start_replication(
            "START_REPLICATION SLOT bench LOGICAL 0/0 (proto_version '1', publication_names 'bench')"
        )
        started = time.perf_counter()
        cpu = time.process_time()
        inserts = 0
        done = False
        while not done:
            for payload in await connection.read_copy_data():
                if payload[0] == 119:  # XLogData
                    kind = payload[25]
                    if kind == 73:  # Insert
                        inserts += 1
                    elif kind == 67 and int.from_bytes(payload[35:43]) >= end:  # Commit's end LSN
                        done = True
        return inserts, time.perf_counter() - started, time.process_time() - cpu
    finally:
        await connection.aclose()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_streamer(
    cluster: Cluster, workdir: Path, end: int, rows: int, chunk: int, *, processors: str = "", sink: str = FILE_SINK
) -> tuple[float, float]:
    """(changes/s, CPU us per change) of ``streamer run`` draining slot ``bench`` to a file."""
    shutil.rmtree(workdir / "out", ignore_errors=True)
    config = workdir / "pipeline.yml"
    config.write_text(PIPELINE.format(dsn=cluster.dsn, chunk=chunk, processors=processors, sink=sink))
    log = workdir / "streamer.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["taskset", "-c", "0", sys.executable, "-m", "streamer", "run", str(config)],
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        while b"replication started" not in log.read_bytes():
            if process.poll() is not None:
                raise RuntimeError(log.read_text())
            await anyio.sleep(0.01)
        started = time.perf_counter()
        cpu_start = cpu_seconds(process.pid)
        while True:
            confirmed = await sql(
                cluster.dsn, "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'bench'"
            )
            if parse_lsn(str(confirmed[0][0])) >= end:
                break
            await anyio.sleep(0.02)
        elapsed = time.perf_counter() - started
        cpu = cpu_seconds(process.pid) - cpu_start
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    written = (workdir / "out" / "changes.jsonl").read_bytes().count(b"\n") if sink == FILE_SINK else rows
    if written != rows:
        raise RuntimeError(f"expected {rows} changes in the file, found {written}")
    return rows / elapsed, cpu / rows * 1e6


async def reset_slot(dsn: str) -> None:
    """Put slot ``bench`` back where it started (a copy of the spare made at the same point)."""
    await sql(dsn, "SELECT pg_drop_replication_slot('bench')")
    await sql(dsn, "SELECT pg_copy_logical_replication_slot('bench_spare', 'bench')")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--transaction", type=int, default=1000, help="rows per inserting transaction")
    parser.add_argument("--chunk", type=int, default=1000, help="the input's chunk_size")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also run without processors, and without processors into a blackhole sink (the input's own cost)",
    )
    args = parser.parse_args()
    if shutil.which("taskset") is None:
        raise SystemExit("taskset is missing (util-linux)")
    cluster = start_cluster()
    workdir = Path(tempfile.mkdtemp(prefix="bench-cdc-"))
    try:
        dsn = cluster.dsn
        await sql(
            dsn, "CREATE TABLE bench (id bigint PRIMARY KEY, payload text); CREATE PUBLICATION bench FOR TABLE bench"
        )
        await sql(dsn, "SELECT pg_create_logical_replication_slot('bench_spare', 'pgoutput')")
        await sql(dsn, "SELECT pg_copy_logical_replication_slot('bench_spare', 'bench')")
        for first in range(1, args.rows + 1, args.transaction):
            last = min(first + args.transaction - 1, args.rows)
            await sql(dsn, f"INSERT INTO bench SELECT g, repeat('x', 91) FROM generate_series({first}, {last}) g")
        end = parse_lsn(str((await sql(dsn, "SELECT pg_current_wal_lsn()"))[0][0]))
        row_bytes = (await sql(dsn, "SELECT avg(pg_column_size(bench.*))::int FROM bench"))[0][0]
        print(f"rows={args.rows} transaction={args.transaction} row_bytes={row_bytes} chunk={args.chunk}")
        raw_rates: list[float] = []
        rates: list[float] = []
        cpus: list[float] = []
        for round_ in range(args.rounds):
            drained = subprocess.run(
                ["taskset", "-c", "0", sys.executable, __file__, "--drain", dsn, str(end)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            match = re.search(r"inserts=(\d+) seconds=([\d.]+) cpu=([\d.]+)", drained.stdout)
            assert match is not None, drained.stdout + drained.stderr
            inserts, seconds, raw_cpu = int(match[1]), float(match[2]), float(match[3])
            assert inserts == args.rows, f"raw drain saw {inserts} inserts"
            raw_rates.append(inserts / seconds)
            rate, cpu = await run_streamer(cluster, workdir, end, args.rows, args.chunk)
            rates.append(rate)
            cpus.append(cpu)
            print(
                f"round {round_ + 1}: raw drain {raw_rates[-1]:,.0f} changes/s ({raw_cpu / inserts * 1e6:.1f} us CPU "
                f"per change), streamer {rate:,.0f} changes/s ({rate / raw_rates[-1]:.2f}x), "
                f"{cpu:.1f} us CPU per change"
            )
            await reset_slot(dsn)
            if args.breakdown:
                for label, processors, sink in (
                    ("no processors, file", "processors: []", FILE_SINK),
                    ("no processors, blackhole", "processors: []", "{type: blackhole, route: all}"),
                ):
                    part, part_cpu = await run_streamer(
                        cluster, workdir, end, args.rows, args.chunk, processors=processors, sink=sink
                    )
                    print(f"  {label}: {part:,.0f} changes/s, {part_cpu:.1f} us CPU per change")
                    await reset_slot(dsn)
        raw, rate = statistics.median(raw_rates), statistics.median(rates)
        print(
            f"median: raw drain {raw:,.0f} changes/s; streamer {rate:,.0f} changes/s = {rate / raw:.2f}x "
            f"(target >= 50,000 and >= 0.5x); {statistics.median(cpus):.1f} us CPU per change"
        )
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--drain":
        count, took, cpu = anyio.run(raw_drain, sys.argv[2], int(sys.argv[3]))
        print(f"inserts={count} seconds={took:.3f} cpu={cpu:.3f}")
    else:
        anyio.run(main)
