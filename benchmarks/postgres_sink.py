"""HTTP -> PostgreSQL benchmark: streamer's postgres sink beside a hand-written asyncpg COPY loop.

    .venv/bin/python benchmarks/postgres_sink.py [--dsn postgresql://postgres@127.0.0.1:5432/test]
        [--duration 10] [--windows 5] [--warmup 2] [--connections 64] [--scenario tp2|self_describing]
        [--on-conflict none,ignore] [--in-flight 1] [--batch 500] [--rounds 1]

For each ``on_conflict`` mode (``none``: plain binary COPY; ``ignore``: COPY into a temporary table, then
INSERT ... ON CONFLICT DO NOTHING), in one run, each into a fresh table with the sink's default columns
(16, six of them jsonb) and the event id as primary key, three writers take turns, ``--windows`` times
``--duration / --windows`` seconds each, so that a shared machine's changing load weighs on them alike:

1. **pipeline**: ``streamer run`` (the real CLI, pinned to core 0) of HTTP -> decode -> validate ->
   annotate -> postgres sink, driven by ``wrk`` on core 1 exactly as ``benchmarks/http_ingest.py`` does
   (same bodies, same Lua script); events/s answered. At the end the table must hold every answered
   event (plus at most the requests in flight when each wrk run stopped).
2. **loop**: a hand-written asyncpg loop (a process pinned to core 0) that COPYs the very rows the
   pipeline wrote, read back from its table, as plain tuples (jsonb as text, asyncpg's default), in
   batches of ``--batch`` rows, ``--in-flight`` connections each writing one batch after another: the
   ceiling of asyncpg and this server for these rows. Each batch gets fresh event ids, so ``ignore``
   never skips a row.
3. **sink alone**: ``PostgresSink.write`` in the same kind of process, over the same rows turned back
   into envelopes, in batches of ``--batch``, ``--in-flight`` at a time: the sink's own cost beside the
   loop's, without HTTP.

PostgreSQL is not pinned (it is a shared server); with two cores it competes with streamer and wrk in
the pipeline's windows and with one writer process in the others. The report gives pipeline / loop
(issue 12's target: >= 0.8), sink alone / loop, the cost of ``ignore`` over plain COPY, and the CPU
PostgreSQL spent per row (from /proc, all its processes: on a shared server an upper bound).

Needs ``wrk`` and ``taskset`` (see http_ingest.py) and a PostgreSQL the DSN reaches (it creates and drops
``bench_pg_*`` tables there). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

import http_ingest as ingest  # noqa: E402  (the load generator, shared)

PYTHON = sys.executable
TARGET_RATIO = 0.8

PIPELINE = """\
name: postgres-benchmark
inputs:
  web:
    type: http
    host: 127.0.0.1
    port: ${BENCH_PORT}
    routes:
      - type: self_describing
        path: /events
      - type: snowplow
processors:
  - type: decode
  - type: validate
  - type: annotate
registry:
  repositories:
    - type: file
      path: ${BENCH_SCHEMAS}
sinks:
  valid:
    type: postgres
    route: valid
    dsn: ${BENCH_PG_DSN}
    table: ${BENCH_PG_TABLE}
    on_conflict: ${BENCH_PG_ON_CONFLICT}
    delivery:
      max_in_flight: ${BENCH_PG_IN_FLIGHT}
  invalid:
    type: blackhole
    route: invalid
"""


# The writers (run in a pinned subprocess: --writer loop|sink) ------------------------------------------


async def _rows(dsn: str, table: str, limit: int) -> tuple[list[str], list[tuple[Any, ...]]]:
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        records = await con.fetch(f'SELECT * FROM "{table}" LIMIT {int(limit)}')
    finally:
        await con.close()
    if not records:
        sys.exit(f"{table} is empty: the pipeline wrote nothing")
    return list(records[0].keys()), [tuple(r.values()) for r in records]


async def _create(con: Any, table: str) -> None:
    from streamer.core.components import Context
    from streamer.core.registry import SchemaResolver
    from streamer.postgres.sink import PostgresSink, PostgresSinkSpec

    spec = PostgresSinkSpec(dsn="postgresql://unused/", table=table)
    ddl = PostgresSink("ddl", spec, Context("b", "asyncio", SchemaResolver([]))).create_statement()
    await con.execute(f'DROP TABLE IF EXISTS "{table}"')
    await con.execute(ddl)


async def run_loop(
    dsn: str, source: str, target: str, on_conflict: str, batch: int, seconds: float, in_flight: int
) -> float:
    """The hand-written loop: COPY pre-built row tuples, fresh ids per batch, ``in_flight`` connections
    each writing one batch after another; returns rows/s."""
    import asyncpg

    from streamer.core.envelope import new_event_ids

    columns, rows = await _rows(dsn, source, 50_000)
    quoted = ", ".join(f'"{c}"' for c in columns)
    insert = f'INSERT INTO "{target}" ({quoted}) SELECT {quoted} FROM stage ON CONFLICT DO NOTHING'
    setup = await asyncpg.connect(dsn)
    await _create(setup, target)
    written = 0

    async def writer(number: int, deadline: float) -> None:
        nonlocal written
        con = await asyncpg.connect(dsn)
        try:
            if on_conflict == "ignore":
                await con.execute(f'CREATE TEMP TABLE stage (LIKE "{target}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS')
            offset = number * batch
            while time.perf_counter() < deadline:
                chunk = rows[offset : offset + batch] or rows[:batch]
                offset = offset + batch if offset + batch < len(rows) else 0
                records = [(new_id, *row[1:]) for new_id, row in zip(new_event_ids(len(chunk)), chunk, strict=True)]
                if on_conflict == "ignore":
                    async with con.transaction():
                        await con.copy_records_to_table("stage", records=records, columns=columns)
                        await con.execute(insert)
                else:
                    await con.copy_records_to_table(target, records=records, columns=columns)
                written += len(records)
        finally:
            await con.close()

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer(n, start + seconds) for n in range(in_flight)))
        elapsed = time.perf_counter() - start
        await setup.execute(f'DROP TABLE "{target}"')
    finally:
        await setup.close()
    return written / elapsed


async def run_sink(
    dsn: str, source: str, target: str, on_conflict: str, batch: int, seconds: float, in_flight: int
) -> float:
    """streamer's sink over the same rows as envelopes (fresh ids per batch), ``in_flight`` batches at a
    time as the sink worker's ``max_in_flight`` does; returns events/s."""
    import json

    import asyncpg
    import msgspec

    from streamer.core.components import BatchEncoder, Context
    from streamer.core.envelope import Envelope, new_event_ids
    from streamer.core.registry import SchemaResolver
    from streamer.postgres.sink import PostgresSink, PostgresSinkSpec

    columns, rows = await _rows(dsn, source, 50_000)
    envelopes = []
    for row in rows:
        item = dict(zip(columns, row, strict=True))
        for name in ("source", "payload", "contexts", "atomic", "errors", "tags"):
            if item[name] is not None:
                item[name] = json.loads(item[name])
        item["id"] = str(item["id"])
        envelopes.append(msgspec.convert(item, Envelope))
    con = await asyncpg.connect(dsn)
    try:
        await _create(con, target)
    finally:
        await con.close()
    spec = PostgresSinkSpec(dsn=dsn, table=target, on_conflict=on_conflict)  # type: ignore[arg-type]
    sink = PostgresSink("bench", spec, Context("b", "asyncio", SchemaResolver([])))
    await sink.open()
    encoder = BatchEncoder(sink.encoding)
    written = 0

    async def writer(number: int, deadline: float) -> None:
        nonlocal written
        offset = number * batch
        while time.perf_counter() < deadline:
            chunk = envelopes[offset : offset + batch] or envelopes[:batch]
            offset = offset + batch if offset + batch < len(envelopes) else 0
            chunk = [msgspec.structs.replace(e, id=i) for e, i in zip(chunk, new_event_ids(len(chunk)), strict=True)]
            await sink.write(encoder.batch(chunk))  # a new event each time (fresh ids), as the loop does
            written += len(chunk)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer(n, start + seconds) for n in range(in_flight)))
        elapsed = time.perf_counter() - start
    finally:
        await sink.aclose()
    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f'DROP TABLE "{target}"')
    finally:
        await con.close()
    return written / elapsed


def writer_main(args: argparse.Namespace) -> int:
    run = run_loop if args.writer == "loop" else run_sink
    rate = asyncio.run(run(args.dsn, args.source, args.target, args.mode, args.batch, args.duration, args.in_flight))
    print(f"RATE {rate:.1f}")
    return 0


# The driver --------------------------------------------------------------------------------------------


def postgres_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL server process (the backends that did the writing,
    and whatever else the server did meanwhile: on a shared server, an upper bound)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, _, rest = text.partition(") ")
        if name.endswith("(postgres"):
            fields = rest.split()
            # utime + stime, and cutime + cstime: the postmaster's children (backends) once they exited
            total += sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Figures:
    mode: str
    pipeline: ingest.Load
    per: int
    rows: int
    answered: int
    loop: float
    sink: float
    exit_code: int
    pg_cpu: dict[str, float]
    """PostgreSQL CPU microseconds per row written, by run."""

    @property
    def pipeline_rate(self) -> float:
        return self.pipeline.rate * self.per


def _sql(dsn: str, statement: str) -> Any:
    async def go() -> Any:
        import asyncpg

        con = await asyncpg.connect(dsn)
        try:
            return await con.fetchval(statement)
        finally:
            await con.close()

    return asyncio.run(go())


def _writer(
    args: argparse.Namespace, kind: str, mode: str, source: str, work: Path, seconds: float
) -> tuple[float, float]:
    """Rows/s of one writer run of ``seconds``, and the CPU seconds PostgreSQL used meanwhile."""
    cpu = postgres_cpu()
    done = subprocess.run(
        ["taskset", "-c", ingest.SERVER_CORE, PYTHON, __file__, "--writer", kind, "--dsn", args.dsn,
         "--source", source, "--target", f"bench_pg_{kind}_{mode}", "--mode", mode, "--batch", str(args.batch),
         "--duration", str(seconds), "--in-flight", str(args.in_flight)],
        capture_output=True, text=True, check=False, cwd=work,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("RATE ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"{kind} writer failed:\n{done.stdout}\n{done.stderr}")
    return float(line.split()[1]), postgres_cpu() - cpu


def _combine(loads: list[ingest.Load]) -> ingest.Load:
    """The windows of one pipeline run as one load: totals, the median p50 and the worst p99."""
    return ingest.Load(
        seconds=sum(x.seconds for x in loads),
        requests=sum(x.requests for x in loads),
        non_2xx=sum(x.non_2xx for x in loads),
        socket_errors=sum(x.socket_errors for x in loads),
        p50_ms=sorted(x.p50_ms for x in loads)[len(loads) // 2],
        p99_ms=max(x.p99_ms for x in loads),
        cpu_seconds=sum(x.cpu_seconds for x in loads),
    )


def run_mode(args: argparse.Namespace, scenario: ingest.Scenario, mode: str, bodies: Path, work: Path) -> Figures:
    table = f"bench_pg_pipeline_{mode}"
    _sql(args.dsn, f'DROP TABLE IF EXISTS "{table}"')

    async def create() -> None:
        import asyncpg

        con = await asyncpg.connect(args.dsn)
        try:
            await _create(con, table)
        finally:
            await con.close()

    asyncio.run(create())
    port = ingest.free_port()
    log = work / f"streamer-{mode}.log"
    pipeline = work / "postgres.yml"
    pipeline.write_text(PIPELINE)
    env = {
        **os.environ,
        "BENCH_PORT": str(port),
        "BENCH_SCHEMAS": str(ROOT / "schemas"),
        "BENCH_PG_DSN": args.dsn,
        "BENCH_PG_TABLE": table,
        "BENCH_PG_ON_CONFLICT": mode,
        "BENCH_PG_IN_FLIGHT": str(args.in_flight),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", ingest.SERVER_CORE, str(Path(PYTHON).parent / "streamer"), "run", str(pipeline)],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    ingest.wait_until(lambda: ingest.http_ok(f"http://127.0.0.1:{port}/ready"), process, "streamer", log)
    path = "/events" if scenario.name == "self_describing" else scenario.path
    target = ingest.Target(f"http://127.0.0.1:{port}{path}", process.pid, bodies, scenario.content_type)
    per = scenario.events_per_request
    window = args.duration / args.windows
    loads: list[ingest.Load] = []
    loops: list[float] = []
    sinks: list[float] = []
    pg_cpu = {"pipeline": 0.0, "loop": 0.0, "sink": 0.0}
    try:
        warm = ingest.run_wrk(target, args.warmup, args.connections)
        # The three take turns, window after window, so that a machine whose load changes (a shared
        # one) weighs on them alike. The streamer process idles while the writers run.
        for _ in range(args.windows):
            cpu = postgres_cpu()
            loads.append(ingest.run_wrk(target, window, args.connections))
            pg_cpu["pipeline"] += postgres_cpu() - cpu
            rate, cpu = _writer(args, "loop", mode, table, work, window)
            loops.append(rate)
            pg_cpu["loop"] += cpu
            rate, cpu = _writer(args, "sink", mode, table, work, window)
            sinks.append(rate)
            pg_cpu["sink"] += cpu
    finally:
        code = ingest.stop(process, "streamer", log)
    load = _combine(loads)
    rows = int(_sql(args.dsn, f'SELECT count(*) FROM "{table}"'))
    answered = (warm.requests + load.requests) * per
    if warm.non_2xx + load.non_2xx:
        print(f"  {mode}: {warm.non_2xx + load.non_2xx} non-2xx answers:\n{ingest._tail(log)}")
    _sql(args.dsn, f'DROP TABLE IF EXISTS "{table}"')
    loop = sum(loops) / len(loops)
    sink = sum(sinks) / len(sinks)
    # CPU microseconds per row (the writers' figure includes reading their 50,000 source rows).
    pipeline_cpu = pg_cpu["pipeline"] / max(load.requests * per, 1) * 1e6
    loop_cpu = pg_cpu["loop"] / (loop * args.duration) * 1e6
    sink_cpu = pg_cpu["sink"] / (sink * args.duration) * 1e6
    return Figures(
        mode,
        load,
        per,
        rows,
        answered,
        loop,
        sink,
        code,
        {"pipeline": pipeline_cpu, "loop": loop_cpu, "sink": sink_cpu},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP -> PostgreSQL benchmark (see the module docstring).")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per writer (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds of the pipeline (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (64)")
    parser.add_argument("--scenario", choices=["tp2", "self_describing"], default="tp2")
    parser.add_argument("--on-conflict", default="none,ignore", help="modes to run, comma-separated")
    parser.add_argument("--batch", type=int, default=500, help="rows per COPY of the loop and sink-alone (500)")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=1,
        help="batches written at once: the sink's delivery.max_in_flight, the loop's connections (1)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=5,
        help="split --duration into this many windows, pipeline, loop and sink alone in turn (5)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat and report each run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    # The writer subprocesses:
    parser.add_argument("--writer", choices=["loop", "sink"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        return writer_main(args)

    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"benchmark needs {', '.join(missing)}: apt-get install wrk util-linux")
    scenario = ingest.SCENARIOS[args.scenario]
    work = Path(tempfile.mkdtemp(prefix="streamer-pg-bench-"))
    ok = True
    try:
        bodies = work / "bodies"
        bodies.write_bytes(b"\n".join(scenario.bodies(64, random.Random(42))) + b"\n")
        print(
            f"scenario {scenario.name} ({scenario.events_per_request} event(s)/request), {args.connections} "
            f"connections, {args.warmup:g} s warm-up + {args.duration:g} s measured; streamer and the writers on "
            f"core {ingest.SERVER_CORE}, wrk on core {ingest.CLIENT_CORE}; loop/sink batches of {args.batch}, "
            f"{args.in_flight} in flight"
        )
        print(f"load average at start: {load_average()}")
        results: list[Figures] = []
        for _ in range(args.rounds):
            for mode in args.on_conflict.split(","):
                results.append(run_mode(args, scenario, mode, bodies, work))
        for f in results:
            in_flight = (args.windows + 1) * args.connections * f.per  # one request per connection per wrk run
            stored_ok = 0 <= f.rows - f.answered <= in_flight
            ratio = f.pipeline_rate / f.loop
            ok = ok and stored_ok and f.exit_code == 0 and f.pipeline.non_2xx == 0
            print(f"\n== on_conflict: {f.mode}")
            print(f"  pipeline   {f.pipeline_rate:9,.0f} events/s  (HTTP -> postgres; p50 {f.pipeline.p50_ms:.1f} ms, "
                  f"p99 {f.pipeline.p99_ms:.1f} ms, streamer CPU {f.pipeline.cpu_share:.0%})")  # fmt: skip
            print(f"  sink alone {f.sink:9,.0f} events/s  (PostgresSink.write, batches of {args.batch})")
            print(f"  loop       {f.loop:9,.0f} rows/s    (hand-written asyncpg COPY, batches of {args.batch})")
            print(f"  ratio      pipeline/loop {ratio:.2f} ({'meets' if ratio >= TARGET_RATIO else 'below'} the "
                  f"{TARGET_RATIO} target); sink alone/loop {f.sink / f.loop:.2f}")  # fmt: skip
            print(
                f"  PostgreSQL CPU per row: pipeline {f.pg_cpu['pipeline']:.1f} us, "
                f"sink alone {f.pg_cpu['sink']:.1f} us, loop {f.pg_cpu['loop']:.1f} us"
            )
            print(f"  [{'ok' if stored_ok else 'FAIL'}] rows stored {f.rows:,} = answered {f.answered:,} "
                  f"+ {f.rows - f.answered:,} in flight (<= {in_flight}); [{'ok' if f.exit_code == 0 else 'FAIL'}] "
                  f"exit {f.exit_code}; [{'ok' if f.pipeline.non_2xx == 0 else 'FAIL'}] every answer 2xx")  # fmt: skip
        print(f"\nload average at the end: {load_average()}")
        modes = {}
        for mode in args.on_conflict.split(","):
            runs = sorted((f for f in results if f.mode == mode), key=lambda f: f.pipeline_rate)
            modes[mode] = runs[len(runs) // 2]
            if len(runs) > 1:

                def median(values: list[float]) -> float:
                    return sorted(values)[len(values) // 2]

                print(
                    f"\n== on_conflict: {mode}, median of {len(runs)} rounds: "
                    f"pipeline {median([f.pipeline_rate for f in runs]):,.0f} events/s, "
                    f"sink alone {median([f.sink for f in runs]):,.0f}, loop {median([f.loop for f in runs]):,.0f}; "
                    f"pipeline/loop {median([f.pipeline_rate / f.loop for f in runs]):.2f}, "
                    f"sink alone/loop {median([f.sink / f.loop for f in runs]):.2f}"
                )
        if "none" in modes and "ignore" in modes:
            plain, ignore = modes["none"], modes["ignore"]
            print(
                "\n== cost of on_conflict: ignore over plain COPY: "
                f"pipeline {ignore.pipeline_rate / plain.pipeline_rate:.2f}x, "
                f"sink alone {ignore.sink / plain.sink:.2f}x, loop {ignore.loop / plain.loop:.2f}x the plain rate"
            )
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
