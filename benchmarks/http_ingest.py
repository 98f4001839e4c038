"""HTTP ingest benchmark: streamer's quickstart pipeline against the bare anyio+httptools ceiling.

    .venv/bin/python benchmarks/http_ingest.py [--duration 10] [--warmup 2] [--connections 64]
                                               [--backend asyncio|trio] [--scenario self_describing|tp2|tp2_replay|all]

For each run it starts the server pinned to core 0 (``taskset -c 0``), drives it with ``wrk`` pinned to
core 1 (one thread, keep-alive connections, POST bodies from ``benchmarks/post.lua``), first for the
warm-up and then for the measured window, and stops it with SIGTERM:

1. ``benchmarks/bare_server.py``: answers 200 and nothing else, on anyio streams (the reference of the
   ratio target), and on asyncio also with ``--transports``, on asyncio's transports (the stack
   streamer's HTTP input uses there: its own ceiling);
2. ``streamer run benchmarks/pipelines/<scenario>.yml`` (the real CLI process): HTTP -> decode -> validate
   -> annotate -> valid/invalid JSON-lines files in a temporary directory. ``tp2_replay`` runs tp2
   through ``benchmarks/replay_tp2.py``: the tp2 route builds each distinct body's envelopes once and
   replays copies, so its figure is the rest of the pipeline's ceiling (a decoder that cost nothing).

It prints requests/s, events/s, the ratio to the bare server, latency, the server's CPU use, whether every
response was a 2xx, and checks the files: every answered event is in the valid file (a few more may be,
for requests in flight when wrk stopped: written, never answered), none in the invalid file.

Needs ``wrk`` (Debian: ``apt-get install wrk``) and ``taskset`` (util-linux). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
SERVER_CORE = "0"
CLIENT_CORE = "1"
TARGET_RATIO = 0.6


# Request bodies -----------------------------------------------------------------------------------------

_PAGES = ["products/1234", "products/987?colour=blue", "cart", "checkout/shipping", "blog/how-to-run-faster"]
_TITLES = ["Blue running shoes - Example Shop", "Your cart - Example Shop", "Checkout", "How to run faster"]


def self_describing_bodies(count: int, rng: random.Random) -> list[bytes]:
    """~300-byte valid page_view events with a user context, one per request."""
    bodies = []
    for _ in range(count):
        event = {
            "schema": "iglu:com.example/page_view/jsonschema/1-0-0",
            "data": {
                "url": f"https://shop.example.com/{rng.choice(_PAGES)}",
                "title": rng.choice(_TITLES),
                "referrer": "https://www.example.org/search?q=running+shoes",
            },
            "contexts": [
                {
                    "schema": "iglu:com.example/user/jsonschema/1-0-0",
                    "data": {"user_id": f"u-{rng.randrange(10**7):07d}", "plan": rng.choice(["free", "pro"])},
                }
            ],
        }
        bodies.append(json.dumps(event, separators=(",", ":")).encode())
    return bodies


def _b64(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document, separators=(",", ":")).encode()).decode().rstrip("=")


def tp2_bodies(count: int, rng: random.Random, events: int = 25) -> list[bytes]:
    """Snowplow tracker protocol 2 POST bodies of ``events`` events each, as the JavaScript tracker sends.

    Each event is an unstructured ``ue`` event (a button_click in a base64 ``ue_px``) with a base64 ``cx``
    holding a user context, plus the usual tracker, page, device and time fields, all strings.
    """
    bodies = []
    for _ in range(count):
        now = int(time.time() * 1000)
        duid = f"{rng.getrandbits(128):032x}"
        sid = f"{rng.getrandbits(128):032x}"
        items = []
        for n in range(events):
            ue = {
                "schema": "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0",
                "data": {
                    "schema": "iglu:com.example/button_click/jsonschema/1-0-0",
                    "data": {"id": f"add-to-cart-{rng.randrange(1000)}", "label": "Add to cart", "position": n},
                },
            }
            cx = {
                "schema": "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1",
                "data": [
                    {
                        "schema": "iglu:com.example/user/jsonschema/1-0-0",
                        "data": {"user_id": f"u-{rng.randrange(10**7):07d}", "plan": rng.choice(["free", "pro"])},
                    }
                ],
            }
            items.append(
                {
                    "e": "ue",
                    "eid": _uuid(rng),
                    "tv": "js-3.23.0",
                    "tna": "sp",
                    "aid": "shop-web",
                    "p": "web",
                    "dtm": str(now - (events - n) * 150),
                    "stm": str(now),
                    "tz": "Europe/Berlin",
                    "lang": "en-GB",
                    "cs": "UTF-8",
                    "res": "1920x1080",
                    "vp": "1519x754",
                    "ds": "1504x3012",
                    "cd": "24",
                    "cookie": "1",
                    "duid": duid,
                    "sid": sid,
                    "vid": "3",
                    "url": f"https://shop.example.com/{rng.choice(_PAGES)}",
                    "page": rng.choice(_TITLES),
                    "refr": "https://www.example.org/search?q=running+shoes",
                    "ue_px": _b64(ue),
                    "cx": _b64(cx),
                }
            )
        body = {"schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4", "data": items}
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


@dataclass(frozen=True)
class Scenario:
    """What one pipeline run posts, where, and how many events each request carries."""

    name: str
    pipeline: Path
    path: str
    events_per_request: int
    bodies: Callable[[int, random.Random], list[bytes]]
    content_type: str = "application/json"
    command: tuple[str, ...] = ()
    """How to start streamer (before ``run PIPELINE``); empty: the installed ``streamer`` CLI."""


SCENARIOS = {
    "self_describing": Scenario(
        "self_describing", HERE / "pipelines" / "ingest.yml", "/events", 1, self_describing_bodies
    ),
    "tp2": Scenario(
        "tp2",
        HERE / "pipelines" / "snowplow.yml",
        "/com.snowplowanalytics.snowplow/tp2",
        25,
        tp2_bodies,
        "application/json; charset=UTF-8",
    ),
    # The floor under tp2: the same run with the route's decoding done once per distinct body.
    "tp2_replay": Scenario(
        "tp2_replay",
        HERE / "pipelines" / "snowplow.yml",
        "/com.snowplowanalytics.snowplow/tp2",
        25,
        tp2_bodies,
        "application/json; charset=UTF-8",
        (PYTHON, str(HERE / "replay_tp2.py")),
    ),
}


# Processes ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode} before it was ready:\n{_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    process.kill()
    sys.exit(f"{what} was not ready after 20 s:\n{_tail(log)}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def stop(process: subprocess.Popen[bytes], what: str, log: Path) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        sys.exit(f"{what} did not stop within 30 s of SIGTERM:\n{_tail(log)}")


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Load:
    """One wrk run, as its done() callback reported it, plus the server's CPU time meanwhile."""

    seconds: float
    requests: int
    non_2xx: int
    socket_errors: int
    p50_ms: float
    p99_ms: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_share(self) -> float:
        """Share of its core the server used: below ~95% the machine was busy with something else."""
        return self.cpu_seconds / self.seconds

    @property
    def cpu_us(self) -> float:
        """Server CPU time per request: steadier than the rate when other processes share the core."""
        return self.cpu_seconds / max(self.requests, 1) * 1e6


@dataclass
class Target:
    """A running server under test."""

    url: str
    pid: int
    bodies: Path
    content_type: str


def _py_spy() -> str:
    beside = Path(PYTHON).parent / "py-spy"  # pip install py-spy puts it in the venv
    return str(beside) if beside.exists() else "py-spy"


_PROFILE_FORMATS = {".svg": "flamegraph", ".json": "speedscope"}  # else collapsed stacks, one per line


def run_wrk(target: Target, seconds: float, connections: int, profile: Path | None = None) -> Load:
    command = [
        "taskset", "-c", CLIENT_CORE,
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s",
        "-s", str(HERE / "post.lua"), target.url,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BODIES": str(target.bodies), "BENCH_CONTENT_TYPE": target.content_type}
    spy = None
    if profile is not None:
        # Sample the server for the middle of the window, from the client's core.
        spy = subprocess.Popen(
            ["taskset", "-c", CLIENT_CORE, _py_spy(), "record", "--pid", str(target.pid), "--rate", "250",
             "--duration", str(max(1, int(seconds) - 2)), "--format", _PROFILE_FORMATS.get(profile.suffix, "raw"),
             "--output", str(profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    cpu_before = cpu_seconds(target.pid)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    cpu = cpu_seconds(target.pid) - cpu_before
    if spy is not None:
        spy.wait()
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if done.returncode != 0 or line is None:
        sys.exit(f"wrk failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = json.loads(line[len("BENCH ") :])
    return Load(
        seconds=report["duration_us"] / 1e6,
        requests=report["requests"],
        non_2xx=report["status"],
        socket_errors=report["connect"] + report["read"] + report["write"] + report["timeout"],
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        cpu_seconds=cpu,
    )


@dataclass
class Run:
    """One server's warm-up and measured loads; for a pipeline, its exit code and output files too."""

    warm: Load
    load: Load
    exit_code: int = 0
    valid_lines: int = 0
    invalid_lines: int = 0


def run_bare(args: argparse.Namespace, work: Path, bodies: Path, transports: bool = False) -> Run:
    port = free_port()
    log = work / "bare.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, PYTHON, str(HERE / "bare_server.py"),
             "--port", str(port), "--backend", args.backend, *(["--transports"] if transports else [])],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_until(lambda: b"listening" in log.read_bytes(), process, "bare server", log)
    target = Target(f"http://127.0.0.1:{port}/events", process.pid, bodies, "application/json")
    try:
        warm = run_wrk(target, args.warmup, args.connections)
        load = run_wrk(target, args.duration, args.connections)
    finally:
        code = stop(process, "bare server", log)
    return Run(warm, load, code)


def run_pipeline(scenario: Scenario, args: argparse.Namespace, work: Path, bodies: Path, round_: int) -> Run:
    port = free_port()
    out_dir = work / f"{scenario.name}-{round_}"
    out_dir.mkdir()
    log = work / f"{scenario.name}-{round_}.log"
    env = {**os.environ, "BENCH_PORT": str(port), "BENCH_SCHEMAS": str(ROOT / "schemas")}
    if args.linger is not None:
        env["BENCH_LINGER"] = str(args.linger)
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, *(scenario.command or [str(Path(PYTHON).parent / "streamer")]),
             "run", str(scenario.pipeline),
             "--backend", args.backend],
            cwd=out_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), process, "streamer", log)
    target = Target(f"http://127.0.0.1:{port}{scenario.path}", process.pid, bodies, scenario.content_type)
    profile = None
    if args.profile is not None and round_ == 0:
        profile = args.profile.with_name(f"{args.profile.stem}-{scenario.name}{args.profile.suffix}")
    try:
        warm = run_wrk(target, args.warmup, args.connections)
        load = run_wrk(target, args.duration, args.connections, profile)
    finally:
        code = stop(process, "streamer", log)
    if code != 0:
        print(f"streamer exited with {code}:\n{_tail(log)}", file=sys.stderr)
    if profile is not None:
        print(f"profile of the measured window: {profile}")
    return Run(warm, load, code, _lines(out_dir / "valid.jsonl"), _lines(out_dir / "invalid.jsonl"))


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


# Report -------------------------------------------------------------------------------------------------


def _median(runs: list[Run]) -> Run:
    """The run with the median rate (the upper one of an even count)."""
    return sorted(runs, key=lambda r: r.load.rate)[len(runs) // 2]


def _spread(runs: list[Run], per: int = 1) -> str:
    if len(runs) == 1:
        return ""
    rates = sorted(r.load.rate * per for r in runs)
    return f"  (median of {len(runs)} runs: {', '.join(f'{x:,.0f}' for x in rates)})"


def _figures(load: Load, per: int) -> str:
    return (
        f"{load.rate:9,.0f} req/s {load.rate * per:9,.0f} events/s  p50 {load.p50_ms:5.1f} ms  "
        f"p99 {load.p99_ms:5.1f} ms  server CPU {load.cpu_share:4.0%} = {load.cpu_us:5.1f} us/req"
    )


def check(scenario: Scenario, run: Run, connections: int) -> dict[str, bool]:
    """What must hold after one pipeline run."""
    per = scenario.events_per_request
    answered = (run.warm.requests + run.load.requests) * per
    extra = run.valid_lines - answered
    in_flight = 2 * connections * per  # at most one request per connection when each wrk run stops
    return {
        "every response 2xx": run.warm.non_2xx + run.load.non_2xx == 0,
        "no socket errors": run.warm.socket_errors + run.load.socket_errors == 0,
        "streamer exited 0 after SIGTERM": run.exit_code == 0,
        # Requests in flight when wrk stops are written but never answered: everything answered must be
        # in the file, plus at most those.
        f"valid.jsonl lines = answered events ({answered:,}) + {extra:,} in flight (<= {in_flight})": 0
        <= extra
        <= in_flight,
        f"no invalid events ({run.invalid_lines} lines in invalid.jsonl)": run.invalid_lines == 0,
    }


def report(
    scenario: Scenario, runs: list[Run], bare: list[Run], transports: list[Run], connections: int
) -> bool:
    """Print one scenario's figures and checks; return whether every check passed."""
    per = scenario.events_per_request
    median, bare_median = _median(runs), _median(bare)
    print(f"\n== {scenario.name}: {per} event(s) per request, {scenario.pipeline.relative_to(ROOT)}")
    print(f"  streamer {_figures(median.load, per)}{_spread(runs, per)}")
    if per == 1:
        ratio = median.load.rate / bare_median.load.rate
        cpu_ratio = bare_median.load.cpu_us / median.load.cpu_us
        verdict = "meets" if ratio >= TARGET_RATIO else "below"
        print(f"  ratio    {ratio:.2f} of the bare server's req/s ({verdict} the {TARGET_RATIO} target); "
              f"by CPU per request {cpu_ratio:.2f}")  # fmt: skip
        if transports:
            ceiling = _median(transports).load
            print(f"           {median.load.rate / ceiling.rate:.2f} of the bare asyncio-transports server's; "
                  f"by CPU per request {ceiling.cpu_us / median.load.cpu_us:.2f}")  # fmt: skip
    ok = True
    for i, run in enumerate(runs):
        for name, passed in check(scenario, run, connections).items():
            ok = ok and passed
            if not passed or i == len(runs) - 1:
                print(f"  [{'ok' if passed else 'FAIL'}] {name}{'' if len(runs) == 1 else f' (run {i + 1})'}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP ingest benchmark (see the module docstring).")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per server (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per server (2)")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (64)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="self_describing")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the servers this many times; "
                        "report the median (use 3-5 on a shared machine)")  # fmt: skip
    parser.add_argument("--linger", type=float, help="override the sinks' delivery.linger (default: the default, 0)")
    parser.add_argument("--profile", type=Path, help="py-spy the pipeline's measured window into this file "
                        "(.svg flame graph, .json speedscope, else collapsed stacks)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, output)")
    parser.add_argument("--connection-close", action="store_true",
                        help="a new connection for every request (Connection: close), as many webhook senders do")
    args = parser.parse_args(argv)
    if args.connection_close:
        os.environ["BENCH_CONNECTION_CLOSE"] = "1"  # read by post.lua in every wrk run

    needed = ["wrk", "taskset"] + ([_py_spy()] if args.profile else [])
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if missing:
        sys.exit(f"benchmark needs {', '.join(missing)}: apt-get install wrk util-linux; .venv/bin/pip install py-spy")
    if (os.cpu_count() or 1) < 2:
        sys.exit("benchmark needs two cores: the server on core 0, wrk on core 1")
    scenarios = list(SCENARIOS.values()) if args.scenario == "all" else [SCENARIOS[args.scenario]]
    for scenario in scenarios:
        if not scenario.pipeline.exists():
            sys.exit(f"scenario {scenario.name} needs {scenario.pipeline.relative_to(ROOT)}")

    work = Path(tempfile.mkdtemp(prefix="streamer-bench-"))
    rng = random.Random(42)
    try:
        clients = "connections, a new one for every request" if args.connection_close else "connections"
        print(f"backend {args.backend}, {args.connections} {clients}, {args.warmup:g} s warm-up + "
              f"{args.duration:g} s measured, {args.rounds} round(s); server on core {SERVER_CORE}, "
              f"wrk on core {CLIENT_CORE}; linger {'default' if args.linger is None else args.linger}")  # fmt: skip
        bare_bodies = work / "bare.bodies"
        bare_bodies.write_bytes(b"\n".join(self_describing_bodies(64, rng)) + b"\n")
        bodies = {}
        for scenario in scenarios:
            bodies[scenario.name] = work / f"{scenario.name}.bodies"
            bodies[scenario.name].write_bytes(b"\n".join(scenario.bodies(64, rng)) + b"\n")
        bare: list[Run] = []
        transports: list[Run] = []
        runs: dict[str, list[Run]] = {scenario.name: [] for scenario in scenarios}
        for round_ in range(args.rounds):
            bare.append(run_bare(args, work, bare_bodies))
            if args.backend == "asyncio":
                transports.append(run_bare(args, work, bare_bodies, transports=True))
            for scenario in scenarios:
                runs[scenario.name].append(run_pipeline(scenario, args, work, bodies[scenario.name], round_))
        median = _median(bare).load
        print(f"\n== bare anyio+httptools server (answers 200, nothing else)\n  bare     {_figures(median, 1)}"
              f"{_spread(bare)}{'' if median.non_2xx == 0 else f'  ({median.non_2xx} non-2xx!)'}")  # fmt: skip
        if transports:
            ceiling = _median(transports).load
            print(f"\n== bare asyncio transports+httptools server (the stack of streamer's HTTP input on asyncio)\n"
                  f"  bare     {_figures(ceiling, 1)}{_spread(transports)}"
                  f"{'' if ceiling.non_2xx == 0 else f'  ({ceiling.non_2xx} non-2xx!)'}")  # fmt: skip
        ok = True
        for scenario in scenarios:
            ok = report(scenario, runs[scenario.name], bare, transports, args.connections) and ok
    finally:
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
