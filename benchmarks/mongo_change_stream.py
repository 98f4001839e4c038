"""MongoDB change stream -> file: the ``mongo_change_stream`` input beside a bare ``watch()`` loop, in one run.

    .venv/bin/python benchmarks/mongo_change_stream.py [--changes 20000] [--rounds 3] [--uri mongodb://...]

Without ``--uri`` it starts nx-27017 (PyPI, a MongoDB wire-protocol server on SQLite) on a file database
in a temporary directory, pinned to core 1 with ``taskset`` when there is one; the client side runs on
core 0. Then:

1. before each reader's run it inserts ``--changes`` documents (a few fields each: an int, a string, a
   nested object, a list) into a new collection, after taking its stream's resume token, so both
   readers below catch up on the same kind of changes from a token;
2. **bare**: a hand-written loop, ``AsyncMongoClient.watch(start_after=token)`` and ``try_next`` until it
   has every change, doing nothing with them: the ceiling of pymongo and this server;
3. **streamer**: the pipeline ``mongo_change_stream -> validate -> file sink`` built in this process,
   with the collector tuned as ``streamer run`` tunes it (the file sink's JSON lines, the token saved to
   a file every second), started from its token; timed from the pipeline's start until the sink has
   written every change.

Rounds alternate the two (``--rounds``) and the median is reported: changes/s, and the client's CPU
time per change (``time.process_time``: this process only, not the server), which moves much less
than the rate when other processes share the machine. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def start_nx(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    script = Path(sys.executable).parent / "nx-27017"
    process = subprocess.Popen(
        [*pin(1), str(script), "--db", str(directory / "nx.db"), "-p", str(port),
         "--log-file", str(directory / "nx.log"), "--pid-file", str(directory / "nx.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("nx-27017 did not start (pip install nx-27017)") from None
            time.sleep(0.05)
    return process, f"mongodb://127.0.0.1:{port}/?directConnection=true"


async def prepare(uri: str, collection: str, changes: int) -> dict[str, Any]:
    """Insert the documents into ``collection`` after taking a token; return the token."""
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(uri)
    try:
        orders = client.bench[collection]
        async with await orders.watch() as stream:
            token = stream.resume_token
        for start in range(0, changes, 1000):
            await orders.insert_many(
                [
                    {"n": n, "sku": f"sku-{n % 97}", "customer": {"id": n % 1000, "tier": "gold"}, "items": [1, 2, 3]}
                    for n in range(start, min(start + 1000, changes))
                ]
            )
        return dict(token)
    finally:
        await client.close()


async def bare(
    uri: str, collection: str, token: dict[str, Any], changes: int, batch_size: int = 256
) -> tuple[float, float]:
    from pymongo import AsyncMongoClient

    client: Any = AsyncMongoClient(uri)
    try:
        seen = 0
        wall, cpu = time.perf_counter(), time.process_time()
        async with await client.bench[collection].watch(
            start_after=token, batch_size=batch_size, max_await_time_ms=100
        ) as s:
            while seen < changes:
                if await s.try_next() is not None:
                    seen += 1
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.close()


async def pipeline(
    uri: str, collection: str, token: dict[str, Any], changes: int, directory: Path, batch_size: int = 256
) -> tuple[float, float]:
    import anyio

    from streamer.cli import tune_gc
    from streamer.connectors import default_catalog
    from streamer.core.config import load_document
    from streamer.core.graph import build_pipeline
    from streamer.core.spec import compile_document
    from streamer.mongo.tokens import ResumeState, encode_state

    for old in directory.glob("out*"):
        old.unlink()
    state = directory / "state.json"
    state.write_bytes(encode_state(ResumeState(token=token), "bench/orders"))
    text = f"""
name: bench
inputs:
  orders:
    type: mongo_change_stream
    uri: "{uri}"
    database: bench
    collection: {collection}
    max_await: 0.1
    batch_size: {batch_size}
    token_store: {{type: file, path: {state}}}
processors:
  - type: validate
sinks:
  valid: {{type: file, path: {directory / "out.jsonl"}}}
  invalid: {{type: file, path: {directory / "out-invalid.jsonl"}, route: invalid}}
"""
    compiled = compile_document(load_document(text, "bench.yml"), default_catalog())
    built = build_pipeline(compiled, "asyncio", base_dir=directory)
    tune_gc(compiled.runtime.gc_threshold)  # as `streamer run` does
    valid = next(w for w in built.workers if w.name == "valid")
    async with anyio.create_task_group() as tg:
        await tg.start(built.run)
        wall, cpu = time.perf_counter(), time.process_time()
        while valid.written < changes:  # noqa: ASYNC110 - a counter, no event to wait on
            await anyio.sleep(0.002)
        elapsed = time.perf_counter() - wall, time.process_time() - cpu
        built.stop()
    invalid = sum(w.written for w in built.workers if w.name == "invalid")
    assert invalid == 0, f"{invalid} invalid events"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uri", help="a replica set's URI instead of a local nx-27017")
    parser.add_argument("--batch-size", type=int, default=256, help="the input's batch_size (and the bare getMore's)")
    args = parser.parse_args()

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None

    def run(coroutine: Any) -> Any:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(coroutine)

    if pin(0):
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="bench-mongo-") as temporary:
        directory = Path(temporary)
        server = None
        uri = args.uri
        if uri is None:
            server, uri = start_nx(directory)
        try:
            results: dict[str, list[tuple[float, float]]] = {"bare": [], "streamer": []}
            for round_ in range(args.rounds):
                # A collection per reader and round: nx-27017 keeps only the last 1000 changes behind the
                # slowest open stream, so changes one reader consumed are gone for the next.
                collection = f"bare_{round_}"
                token = run(prepare(uri, collection, args.changes))
                results["bare"].append(run(bare(uri, collection, token, args.changes, args.batch_size)))
                collection = f"streamer_{round_}"
                token = run(prepare(uri, collection, args.changes))
                results["streamer"].append(
                    run(pipeline(uri, collection, token, args.changes, directory, args.batch_size))
                )
        finally:
            if server is not None:
                server.kill()
                server.wait()
    print(f"{args.changes} changes, {args.rounds} rounds (median), server: {'nx-27017' if args.uri is None else uri}")
    rates = {}
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rates[name] = args.changes / wall
        print(
            f"  {name:9s} {rates[name]:9.0f} changes/s   client CPU {cpu / args.changes * 1e6:6.1f} us/change"
            f"   ({', '.join(f'{args.changes / r[0]:.0f}' for r in runs)})"
        )
    print(f"  streamer / bare: {rates['streamer'] / rates['bare']:.2f}")


if __name__ == "__main__":
    main()
