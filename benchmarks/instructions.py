"""Instructions per request: the ingest benchmark's servers counted by callgrind instead of timed.

    .venv/bin/python benchmarks/instructions.py [--scenario self_describing|tp2|tp2_replay|all] [--duration 20]

A shared VM's speed moves by +-30 % from one minute to the next, more than most single changes to the
hot path; the number of instructions a request costs does not. For the bare anyio+httptools server and
each scenario's pipeline (the same servers, pipelines and bodies as ``benchmarks/http_ingest.py``) this
starts the server under ``valgrind --tool=callgrind``, warms it up with ``wrk``, zeroes the counters,
drives it for ``--duration`` seconds, dumps the counters and divides by the requests wrk saw answered.

Counted: user-space instructions of the server process (the interpreter, uvloop, msgspec, ...), not the
kernel's (socket and file system calls) and not cache misses, so the ratio of two counts is a guide to,
not a measure of, the ratio of two rates. Requests in flight at either end of the window make a count
move by a few percent between runs; compare figures of the same duration.

Needs valgrind and wrk (Debian: ``apt-get install valgrind wrk``). Under valgrind a server runs ~50x
slower: a 20 s window holds a few thousand self-describing requests. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_ingest import (  # a script beside this one, not a package
    HERE,
    PYTHON,
    ROOT,
    SCENARIOS,
    TARGET_RATIO,
    Scenario,
    free_port,
    http_ok,
    self_describing_bodies,
)

_STARTUP_SECONDS = 300  # imports under valgrind are slow


def _wrk(url: str, bodies: Path, content_type: str, seconds: float, connections: int) -> int:
    """Requests answered in one wrk run."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "60s",
               "-s", str(HERE / "post.lua"), url]  # fmt: skip
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_CONTENT_TYPE": content_type}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = json.loads(line[len("BENCH ") :])
    if report["status"] or report["connect"] + report["read"] + report["write"] + report["timeout"]:
        sys.exit(f"wrk saw errors or non-2xx responses: {report}")
    return int(report["requests"])


def count(
    name: str, server: list[str], ready_url: str, url: str, bodies: Path, content_type: str,
    args: argparse.Namespace, work: Path, env: dict[str, str] | None = None,
) -> float:  # fmt: skip
    """Instructions per answered request of ``server`` run under callgrind."""
    out = work / f"callgrind-{name}"
    log = work / f"{name}.log"
    run_dir = work / name
    run_dir.mkdir()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *server],
            cwd=run_dir, env=env, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while not http_ok(ready_url):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"{name} did not start under valgrind; see {log}")
            time.sleep(0.5)
        _wrk(url, bodies, content_type, args.warmup, args.connections)
        subprocess.run(["callgrind_control", "--zero", str(process.pid)], check=True, capture_output=True)
        requests = _wrk(url, bodies, content_type, args.duration, args.connections)
        subprocess.run(["callgrind_control", "--dump", str(process.pid)], check=True, capture_output=True)
    finally:
        process.terminate()
        process.wait(timeout=120)
    dump = Path(f"{out}.1")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(dump, args.keep / f"callgrind-{name}.out")
    summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
    return int(summary.split()[1]) / max(requests, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Instructions per request under callgrind (see the docstring).")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--duration", type=float, default=20.0, help="counted seconds per server (20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="uncounted warm-up seconds per server (5)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (64)")
    parser.add_argument("--keep", type=Path, help="copy each callgrind dump here, for callgrind_annotate")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("valgrind", "callgrind_control", "wrk") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"needs {', '.join(missing)}: apt-get install valgrind wrk")
    scenarios: list[Scenario] = list(SCENARIOS.values()) if args.scenario == "all" else [SCENARIOS[args.scenario]]

    work = Path(tempfile.mkdtemp(prefix="streamer-instructions-"))
    rng = random.Random(42)
    try:
        print(f"callgrind, {args.connections} connections, {args.warmup:g} s warm-up + {args.duration:g} s counted")
        bare_bodies = work / "bare.bodies"
        bare_bodies.write_bytes(b"\n".join(self_describing_bodies(64, rng)) + b"\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}/events"
        bare = count("bare", [PYTHON, str(HERE / "bare_server.py"), "--port", str(port)], url, url,
                     bare_bodies, "application/json", args, work)  # fmt: skip
        print(f"  {'bare':<16}{bare:12,.0f} instructions/request (anyio streams)")
        port = free_port()
        url = f"http://127.0.0.1:{port}/events"
        ceiling = count("bare-transports", [PYTHON, str(HERE / "bare_server.py"), "--port", str(port), "--transports"],
                        url, url, bare_bodies, "application/json", args, work)  # fmt: skip
        print(f"  {'bare':<16}{ceiling:12,.0f} instructions/request (asyncio transports)")
        for scenario in scenarios:
            bodies = work / f"{scenario.name}.bodies"
            bodies.write_bytes(b"\n".join(scenario.bodies(64, rng)) + b"\n")
            port = free_port()
            env = {**os.environ, "BENCH_PORT": str(port), "BENCH_SCHEMAS": str(ROOT / "schemas")}
            server = [*(scenario.command or (PYTHON, "-m", "streamer")), "run", str(scenario.pipeline)]
            per_request = count(scenario.name, server, f"http://127.0.0.1:{port}/ready",
                                f"http://127.0.0.1:{port}{scenario.path}", bodies, scenario.content_type,
                                args, work, env)  # fmt: skip
            per = scenario.events_per_request
            line = f"  {scenario.name:<16}{per_request:12,.0f} instructions/request"
            if per == 1:
                line += (f"; bare/streamer {bare / per_request:.2f} (the rate target is {TARGET_RATIO}), "
                         f"{ceiling / per_request:.2f} of the transports one")  # fmt: skip
            else:
                line += f" = {per_request / per:,.0f} per event"
            print(line)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
