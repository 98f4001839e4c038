"""The kafka sink with a dead-letter sink: a broker that stays down, a topic that is missing.

``idempotent: false`` throughout: Tansu 0.6 refuses the idempotent producer (InitProducerId).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from tests.kafka.conftest import Broker, create_topic, read_records
from tests.support import TcpProxy, http_port, read_jsonl, running

pytestmark = [pytest.mark.anyio, pytest.mark.services]

PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
CLICK = "iglu:com.example/button_click/jsonschema/1-0-0"
CLICK_DATA = {"id": "buy", "label": "Buy now"}

PIPELINE = """
inputs:
  web: {{type: http, port: 0, request_timeout: 30}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  kafka:
    type: kafka
    brokers: "{brokers}"
    topic: "{topic}"
    idempotent: false
    request_timeout: 1
    delivery: {{retries: 1, retry_backoff: 0.05, dead_letter: spill}}
  spill: {{type: file, path: spill.jsonl, route: dead_letters, fsync: batch}}
"""


async def post_all(port: int, count: int) -> list[int]:
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(n: int) -> None:
            body = {"schema": PAGE_VIEW, "data": {"url": f"https://example.com/{n}"}}
            statuses.append((await client.post(f"http://127.0.0.1:{port}/events", json=body)).status_code)

        async with anyio.create_task_group() as tg:
            for n in range(count):
                tg.start_soon(one, n)
    return statuses


@pytest.mark.timeout(90)
async def test_a_broker_that_stays_down_sends_every_event_to_dead_letters(
    proxied_broker: tuple[Broker, TcpProxy], tmp_path: Path
) -> None:
    broker, proxy = proxied_broker
    topic = f"down.{uuid.uuid4().hex[:8]}"
    await create_topic(broker.address, topic, partitions=2)
    async with running(PIPELINE.format(brokers=broker.address, topic=topic), tmp_path) as pipeline:
        await proxy.stop()  # the sink opened against a live broker; now it is gone for good
        statuses = await post_all(http_port(pipeline), 30)
        stats = pipeline.statistics()["kafka"]
    assert statuses == [200] * 30  # every event is durably somewhere: in the dead-letter file
    assert (stats["written"], stats["failed"], stats["dead_lettered"]) == (0, 0, 30)
    letters = read_jsonl(tmp_path / "spill.jsonl")
    assert sorted(letter["envelope"]["payload"]["url"] for letter in letters) == sorted(
        f"https://example.com/{n}" for n in range(30)
    )  # 0 lost, none twice
    assert {letter["dead_letter"]["sink"] for letter in letters} == {"kafka"}
    assert {letter["dead_letter"]["reason"] for letter in letters} == {"failed"}
    assert {letter["dead_letter"]["attempts"] for letter in letters} == {2}  # the first try and one retry
    assert all(letter["dead_letter"]["error"].startswith("RetryableError(") for letter in letters)
    await proxy.start()
    assert await read_records(broker.address, topic, idle=0.5) == []


@pytest.mark.timeout(60)
async def test_a_missing_template_topic_is_fatal_and_goes_to_dead_letters_at_once(
    kafka: str, topic: str, tmp_path: Path
) -> None:
    await create_topic(kafka, f"{topic}.page_view", partitions=1)
    text = PIPELINE.format(brokers=kafka, topic=topic + ".{schema_name}").replace("retries: 1", "retries: 5")
    async with running(text, tmp_path) as pipeline:
        async with httpx.AsyncClient(timeout=30) as client:
            url = f"http://127.0.0.1:{http_port(pipeline)}/events"
            kept = {"schema": PAGE_VIEW, "data": {"url": "https://example.com/kept"}}
            lost = {"schema": CLICK, "data": CLICK_DATA}  # its topic, <topic>.button_click, does not exist
            response = await client.post(url, json=[kept, lost])
            assert response.status_code == 200
    letters = read_jsonl(tmp_path / "spill.jsonl")
    assert [letter["envelope"]["schema"] for letter in letters] == [CLICK]
    assert letters[0]["dead_letter"]["attempts"] == 1  # fatal: not retried
    assert letters[0]["dead_letter"]["error"].startswith("BatchError(")
    records = await read_records(kafka, f"{topic}.page_view", expect=1)
    assert [json.loads(record.value)["payload"] for record in records] == [{"url": "https://example.com/kept"}]
