"""The dual-write migration of docs/migrations.md, walked phase by phase against PostgreSQL and Kafka (Tansu).

It runs the shipped pipelines (pipelines/dual-write.yml, pipelines/backfill.yml) with the variables they
document. Two settings differ from production, each said where it is made: ``KAFKA_IDEMPOTENT=false``
(Tansu 0.6 refuses the idempotent producer) and a short Kafka request timeout, so that a broker that is down
is noticed within the test's time rather than after the default 30 s.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from tests.kafka.conftest import Broker, create_topic, read_records
from tests.support import ROOT, SCHEMAS, TcpProxy, http_port, read_jsonl, run_to_end, running

pytestmark = [pytest.mark.anyio, pytest.mark.services]

PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
KAFKA_REQUEST_TIMEOUT = 2  # seconds; the production default is 30


def shipped(name: str) -> str:
    """A shipped pipeline's text, with the test's shorter Kafka request timeout."""
    text = (ROOT / "pipelines" / name).read_text()
    return text.replace(
        "    idempotent: ${KAFKA_IDEMPOTENT:-true}",
        f"    idempotent: ${{KAFKA_IDEMPOTENT:-true}}\n    request_timeout: {KAFKA_REQUEST_TIMEOUT}",
    )


@pytest.fixture
async def workdir(tmp_path: Path) -> Path:
    (tmp_path / "schemas").symlink_to(SCHEMAS)  # the pipelines name ./schemas
    return tmp_path


@pytest.fixture
async def table(postgres_dsn: str) -> AsyncIterator[str]:
    import asyncpg

    name = f"dual_write_{uuid.uuid4().hex[:10]}"
    yield name
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute(f'DROP TABLE IF EXISTS "{name}"')
    finally:
        await connection.close()


async def post_events(port: int, first: int, count: int) -> list[int]:
    """POST events ``first .. first+count-1`` from 8 clients at once; their statuses."""
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(n: int) -> None:
            body = {"schema": PAGE_VIEW, "data": {"url": f"https://example.com/{n}"}}
            statuses.append((await client.post(f"http://127.0.0.1:{port}/events", json=body)).status_code)

        limiter = anyio.CapacityLimiter(8)

        async def limited(n: int) -> None:
            async with limiter:
                await one(n)

        async with anyio.create_task_group() as tg:
            for n in range(first, first + count):
                tg.start_soon(limited, n)
    return statuses


async def postgres_ids(dsn: str, table: str) -> list[str]:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        return [str(row[0]) for row in await connection.fetch(f'SELECT id FROM "{table}"')]
    finally:
        await connection.close()


async def kafka_ids(brokers: str, topic: str, expect: int | None = None) -> list[str]:
    return [record.key.decode() for record in await read_records(brokers, topic, expect=expect)]


async def urls_by_id(dsn: str, table: str) -> dict[str, str]:
    import asyncpg

    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(f'SELECT id, payload FROM "{table}"')
    finally:
        await connection.close()
    return {str(row["id"]): json.loads(row["payload"])["url"] for row in rows}


@pytest.mark.timeout(240)
async def test_the_migration_phases(
    proxied_broker: tuple[Broker, TcpProxy],
    postgres_dsn: str,
    table: str,
    workdir: Path,
) -> None:
    broker, proxy = proxied_broker
    topic = f"migration.{uuid.uuid4().hex[:8]}"
    await create_topic(broker.address, topic, partitions=3)
    env = {
        "STREAMER_PORT": "0",
        "POSTGRES_DSN": postgres_dsn,
        "POSTGRES_TABLE": table,
        "KAFKA_BROKERS": broker.address,
        "KAFKA_TOPIC": topic,
        "KAFKA_IDEMPOTENT": "false",  # Tansu refuses the idempotent producer
    }

    # Phase 1: shadow. PostgreSQL required, Kafka best-effort with its overflow to dead letters.
    async with running(shipped("dual-write.yml"), workdir, env) as pipeline:
        port = http_port(pipeline)
        assert await post_events(port, 0, 60) == [200] * 60
        await proxy.stop()  # Kafka goes down for good while the collector keeps serving
        started = time.monotonic()
        assert await post_events(port, 60, 300) == [200] * 300
        # Every client was answered without waiting for Kafka: in less time than one Kafka request may take
        # (the first write to the broker that is gone is still waiting for its answer), so the 300 events
        # cannot have waited on the shadow's retries; the dead-letter overflow took them.
        assert time.monotonic() - started < KAFKA_REQUEST_TIMEOUT * 3
        overflowed = pipeline.statistics()["kafka"]["overflowed"]
        assert overflowed > 0
        await proxy.start()
        assert await post_events(port, 360, 40) == [200] * 40
    stats = pipeline.statistics()
    in_postgres = await urls_by_id(postgres_dsn, table)
    assert sorted(in_postgres.values()) == sorted(f"https://example.com/{n}" for n in range(400))
    letters = read_jsonl(workdir / "out" / "dead-letter.jsonl")
    assert len(letters) == stats["kafka"]["dead_lettered"] > 0
    assert {letter["dead_letter"]["reason"] for letter in letters} <= {"overflow", "failed"}
    in_kafka = set(await kafka_ids(broker.address, topic))
    missed = {letter["envelope"]["id"] for letter in letters}
    # Every event the shadow missed is in its dead-letter file (written there, never silently dropped).
    assert set(in_postgres) - in_kafka <= missed
    assert stats["kafka"]["dropped"] == 0 and stats["postgres"]["failed"] == 0

    # Phase 2: backfill the dead letters into Kafka with the shipped backfill pipeline.
    shutil.move(workdir / "out" / "dead-letter.jsonl", workdir / "out" / "backfill-1.jsonl")
    backfill = await run_to_end(
        shipped("backfill.yml"), workdir, timeout=60, environ={**env, "BACKFILL_FILE": "out/backfill-1.jsonl"}
    )
    assert backfill.statistics()["kafka"]["written"] == len(letters)

    # Phase 3: verify by counting ids on both sides.
    after_backfill = set(await kafka_ids(broker.address, topic, expect=len(in_kafka) + len(letters)))
    assert after_backfill == set(in_postgres)
    assert len(in_postgres) == 400

    # Phase 4: flip. Kafka required; PostgreSQL the shadow, with dead letters of its own.
    flipped = f"""
inputs:
  web: {{type: http, port: 0, routes: [{{type: self_describing, path: /events}}]}}
registry:
  repositories: [{{type: file, path: schemas}}]
sinks:
  kafka: {{type: kafka, brokers: "{broker.address}", topic: "{topic}", idempotent: false}}
  postgres:
    type: postgres
    dsn: "{postgres_dsn}"
    table: "{table}"
    on_conflict: ignore
    delivery: {{required: false, when_full: dead_letter, dead_letter: dead_letters}}
  dead_letters: {{type: file, path: out/dead-letter-postgres.jsonl, route: dead_letters}}
"""
    async with running(flipped, workdir) as pipeline:
        assert await post_events(http_port(pipeline), 400, 50) == [200] * 50
    assert len(set(await kafka_ids(broker.address, topic, expect=450))) == 450
    assert len(await postgres_ids(postgres_dsn, table)) == 450

    # Phase 5: retire the old store: Kafka alone.
    retired = flipped.split("  postgres:")[0]
    async with running(retired, workdir) as pipeline:
        assert await post_events(http_port(pipeline), 450, 10) == [200] * 10
    assert len(set(await kafka_ids(broker.address, topic, expect=460))) == 460
    assert len(await postgres_ids(postgres_dsn, table)) == 450

