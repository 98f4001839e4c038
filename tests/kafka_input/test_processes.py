"""``streamer run`` on pipelines/kafka-to-postgres.yml as real processes: SIGKILL and restart, two processes
sharing a group. Every produced number must end in PostgreSQL once (the sink's ``on_conflict: ignore``
absorbs what a crash or a rebalance redelivers); an extra file sink counts the redeliveries themselves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any

import anyio
import pytest

from tests.kafka_input.conftest import Broker, create_topic, produce, unique
from tests.support import PAGE_VIEW, PG_DSN, ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.services]


@pytest.fixture
async def table(db: Any) -> AsyncIterator[str]:
    name = f"kafka_events_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await db.execute(f'DROP TABLE IF EXISTS "{name}"')


class Streamer:
    """One ``streamer run`` process on the shipped pipeline, plus a file sink of every delivery."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str]) -> None:
        self.log_path = tmp_path / f"{name}.log"
        self.deliveries = tmp_path / f"{name}.deliveries.jsonl"
        text = (ROOT / "pipelines" / "kafka-to-postgres.yml").read_text()
        spec = tmp_path / f"{name}.yml"
        # The shipped pipeline, with one more sink: every event written, redeliveries included.
        spec.write_text(text + f"  deliveries: {{type: file, path: {self.deliveries.name}}}\n")
        schemas = tmp_path / "schemas"
        if not schemas.exists():
            schemas.symlink_to(ROOT / "schemas")
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamer", "run", str(spec)],
            cwd=tmp_path,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    def delivered(self) -> list[str]:
        """Event ids this process's file sink wrote (a line cut by a kill is skipped)."""
        ids = []
        if self.deliveries.exists():
            for line in self.deliveries.read_bytes().splitlines():
                try:
                    ids.append(json.loads(line)["id"])
                except ValueError:
                    pass
        return ids


@pytest.fixture
def processes() -> Iterator[list[Streamer]]:
    started: list[Streamer] = []
    yield started
    for process in started:
        process.kill()


def numbered(start: int, stop: int) -> list[bytes]:
    return [json.dumps({"schema": PAGE_VIEW, "data": {"url": f"https://example.com/{n}"}}).encode() for n in
            range(start, stop)]


async def counts(db: Any, table: str) -> tuple[int, int]:
    """(rows, distinct numbers) in the table; (0, 0) before the sink created it."""
    exists = await db.fetchval("SELECT to_regclass($1)", table)
    if exists is None:
        return 0, 0
    rows, distinct = await db.fetchrow(f"SELECT count(*), count(DISTINCT payload->>'url') FROM \"{table}\"")
    return int(rows), int(distinct)


async def wait_rows(db: Any, table: str, at_least: int, timeout: float, streamers: list[Streamer]) -> None:
    deadline = time.monotonic() + timeout
    while (await counts(db, table))[1] < at_least:
        for process in streamers:
            assert process.process.poll() is None, f"streamer exited: {process.log()[-3000:]}"
        assert time.monotonic() < deadline, f"fewer than {at_least} rows after {timeout} s: {await counts(db, table)}"
        await anyio.sleep(0.05)


def environment(broker: Broker, topic: str, group: str, table: str) -> dict[str, str]:
    return {
        "KAFKA_BROKERS": broker.address,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP": group,
        "POSTGRES_DSN": PG_DSN,
        "POSTGRES_TABLE": table,
        "KAFKA_SESSION_TIMEOUT": "1.5",
        "KAFKA_HEARTBEAT_INTERVAL": "0.5",
    }


async def test_sigkill_and_restart_lose_nothing_and_store_each_event_once(
    broker: Broker, db: Any, table: str, tmp_path: Path, processes: list[Streamer]
) -> None:
    total = 20_000
    topic = await create_topic(broker.address, partitions=4)
    env = environment(broker, topic, unique("g"), table)

    first = Streamer(tmp_path, "first", env)
    processes.append(first)
    async with anyio.create_task_group() as tg:

        async def stream() -> None:  # a live stream: 250 events every 0.1 s while the first process runs
            for start in range(0, total, 250):
                await produce(broker.address, topic, numbered(start, start + 250))
                await anyio.sleep(0.1)

        tg.start_soon(stream)
        await wait_rows(db, table, total // 2, 60, [first])
        first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    stored_at_kill = {str(r[0]) for r in await db.fetch(f'SELECT id FROM "{table}"')}

    second = Streamer(tmp_path, "second", env)
    processes.append(second)
    await wait_rows(db, table, total, 60, [second])
    await anyio.sleep(1.5)  # a commit interval: the last offsets committed
    second.signal(signal.SIGTERM)
    assert second.wait() == 0, second.log()[-3000:]

    rows, distinct = await counts(db, table)
    assert distinct == total  # 0 lost
    assert rows == total  # 0 duplicate rows: on_conflict: ignore on the position-derived ids
    second_ids = set(second.delivered())
    redelivered = len(second_ids & stored_at_kill)
    print(
        f"\nkilled with {len(stored_at_kill)} rows stored; the restart read {len(second_ids)} events again, "
        f"{redelivered} of them already stored (absorbed by on_conflict: ignore); rows {rows}, distinct {distinct}"
    )
    assert second_ids | stored_at_kill == second_ids | set(first.delivered())
    assert len(second_ids | stored_at_kill) == total
    # What a kill redelivers is what was read after the last commit: at most a commit interval's worth plus
    # the units in flight, never what was committed: the restart did not read everything again.
    assert len(second_ids) < total


async def test_two_processes_share_the_partitions_and_one_takes_over_when_the_other_stops(
    broker: Broker, db: Any, table: str, tmp_path: Path, processes: list[Streamer]
) -> None:
    topic = await create_topic(broker.address, partitions=4)
    env = environment(broker, topic, unique("g"), table)
    await produce(broker.address, topic, numbered(0, 2_000))

    a = Streamer(tmp_path, "a", env)
    processes.append(a)
    await wait_rows(db, table, 2_000, 60, [a])
    b = Streamer(tmp_path, "b", env)
    processes.append(b)
    deadline = time.monotonic() + 30
    while "kafka partitions assigned" not in b.log() or "partitions=none" in b.log().rsplit("assigned", 1)[1]:
        assert time.monotonic() < deadline, b.log()[-3000:]
        await anyio.sleep(0.1)
    await produce(broker.address, topic, numbered(2_000, 6_000))
    await wait_rows(db, table, 6_000, 60, [a, b])
    assert b.delivered(), "b wrote nothing: the partitions were not shared"
    shared_a = len(a.delivered())

    b.signal(signal.SIGTERM)  # a clean stop: b commits what it wrote and leaves the group
    assert b.wait() == 0, b.log()[-3000:]
    await produce(broker.address, topic, numbered(6_000, 10_000))
    await wait_rows(db, table, 10_000, 60, [a])
    assert len(a.delivered()) > shared_a
    a_log = a.log()
    everything = ",".join(f"{topic}[{p}]" for p in range(4))
    assert f"partitions={everything}" in a_log.rsplit("kafka partitions assigned", 1)[1]
    await anyio.sleep(1.5)
    a.signal(signal.SIGTERM)
    assert a.wait() == 0, a_log[-3000:]

    rows, distinct = await counts(db, table)
    assert distinct == 10_000 and rows == 10_000
    a_ids, b_ids = a.delivered(), b.delivered()
    print(f"\na wrote {len(a_ids)}, b wrote {len(b_ids)}, both: {len(set(a_ids) & set(b_ids))}")
    assert len(set(a_ids) | set(b_ids)) == 10_000
