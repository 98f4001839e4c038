"""HTTP -> kafka sink pipelines on Tansu: what lands, a broker down for 10 s under load, start errors, secrets.

Every sink here sets ``idempotent: false``: Tansu 0.6 refuses the idempotent producer (InitProducerId).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from tests.kafka.conftest import Broker, create_topic, need_tansu, read_records
from tests.registry.conftest import free_port
from tests.support import SCHEMAS, TcpProxy, http_port, read_jsonl, running

pytestmark = [pytest.mark.anyio, pytest.mark.services]

PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"


async def test_http_to_kafka_lands_each_event_as_written(kafka: str, topic: str, tmp_path: Path) -> None:
    await create_topic(kafka, topic, partitions=3)
    pipeline_text = f"""
inputs:
  web: {{type: http, port: 0}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  kafka:
    type: kafka
    brokers: {kafka}
    topic: {topic}
    idempotent: false          # Tansu refuses InitProducerId
    headers: [schema, source.input]
    route: all
  copy: {{type: file, path: copy.jsonl, route: all}}
"""
    bodies = [{"schema": PAGE_VIEW, "data": {"url": f"https://example.com/{n}", "title": f"t{n}"}} for n in range(20)]
    bodies.append({"schema": PAGE_VIEW, "data": {"title": 42}})  # invalid: with its errors
    async with running(pipeline_text, tmp_path) as pipeline:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port(pipeline)}") as http:
            for body in bodies:
                response = await http.post("/events", json=body)
                assert response.status_code == 200, response.text
    copies = {event["id"]: event for event in read_jsonl(tmp_path / "copy.jsonl")}
    records = await read_records(kafka, topic, expect=len(bodies))
    assert len(records) == len(copies) == len(bodies)
    for record in records:
        event = json.loads(record.value)
        assert event == copies[record.key.decode()]  # the envelope, field by field, as the file sink wrote it
        assert dict(record.headers) == {"schema": PAGE_VIEW.encode(), "source.input": b"web"}
    assert sum(not json.loads(r.value)["valid"] for r in records) == 1


OUTAGE = 10.0

# The sink must keep retrying through the whole outage rather than give up (which would fail the requests
# with 500): 40 retries with backoff capped at 1 s and request_timeout 2 s span well over a minute. The
# clients meanwhile wait for their answer, or get 503 after the input's request_timeout and send again.
OUTAGE_PIPELINE = """
inputs:
  web: {{type: http, port: 0, request_timeout: 4}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  kafka:
    type: kafka
    brokers: {brokers}
    topic: {topic}
    idempotent: false          # Tansu refuses InitProducerId
    request_timeout: 2
    delivery: {{retries: 40, retry_backoff: 0.2, retry_max_backoff: 1.0}}
"""


class Load:
    """Clients posting page views as a tracker does: a 503 is sent again after Retry-After, nothing else is."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: dict[int, int] = {}
        self.slow = 0
        self.sent: list[str] = []
        self.acked: dict[str, float] = {}
        """Page -> when its 200 arrived."""
        self.stop = anyio.Event()

    async def client(self, number: int) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            sequence = 0
            while not self.stop.is_set():
                page = f"https://example.com/{number}/{sequence}"
                sequence += 1
                self.sent.append(page)
                body = {"schema": PAGE_VIEW, "data": {"url": page}}
                while True:
                    started = time.monotonic()
                    response = await http.post(self.url, json=body)
                    self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
                    if time.monotonic() - started > 1.0:
                        self.slow += 1
                    if response.status_code != 503:
                        break
                    await anyio.sleep(float(response.headers.get("retry-after", "1")))
                if response.status_code == 200:
                    self.acked[page] = time.monotonic()
                await anyio.sleep(0.01)


@pytest.mark.timeout(120)
async def test_broker_unreachable_for_10s_under_load_loses_nothing(
    proxied_broker: tuple[Broker, TcpProxy], tmp_path: Path
) -> None:
    # The broker keeps running and its log; clients reach it only through a proxy that is stopped for 10 s
    # (connections reset, new ones refused) and started again on the same port: to the sink, a broker down.
    broker, proxy = proxied_broker
    topic = f"outage.{uuid.uuid4().hex[:8]}"
    await create_topic(broker.address, topic, partitions=3)
    async with running(OUTAGE_PIPELINE.format(brokers=broker.address, topic=topic), tmp_path) as pipeline:
        load = Load(f"http://127.0.0.1:{http_port(pipeline)}/events")
        async with anyio.create_task_group() as clients:
            for number in range(8):
                clients.start_soon(load.client, number)
            await anyio.sleep(1.5)
            await proxy.stop()
            await anyio.sleep(OUTAGE)
            await proxy.start()
            await anyio.sleep(3.0)
            load.stop.set()

    assert set(load.statuses) <= {200, 503}, load.statuses  # never 500: an outage is retryable, not a failure
    assert load.slow > 0 or load.statuses.get(503, 0) > 0, "clients saw no backpressure during the outage"
    assert set(load.acked) == set(load.sent)  # every event was eventually acknowledged
    pages = [json.loads(r.value)["payload"]["url"] for r in await read_records(broker.address, topic)]
    assert set(load.sent) <= set(pages)  # 0 lost (a 503'd request sent again may be stored twice)
    assert len(load.sent) > 100


@pytest.mark.timeout(120)
async def test_broker_process_restarted_under_load(tmp_path: Path) -> None:
    # A real stop and start of the broker process on the same port. Tansu's memory storage loses its log on
    # restart, so what this proves is: no client saw an error, every event was acknowledged, and every event
    # acknowledged after the restart (those written through the outage) is in the restarted broker's log.
    # Those acknowledged before the stop had been acknowledged by the broker with acks=all.
    broker = Broker(need_tansu(), free_port())
    broker.start()
    topic = f"restart.{uuid.uuid4().hex[:8]}"
    try:
        await create_topic(broker.address, topic, partitions=3)
        async with running(OUTAGE_PIPELINE.format(brokers=broker.address, topic=topic), tmp_path) as pipeline:
            load = Load(f"http://127.0.0.1:{http_port(pipeline)}/events")
            async with anyio.create_task_group() as clients:
                for number in range(8):
                    clients.start_soon(load.client, number)
                await anyio.sleep(1.5)
                await anyio.to_thread.run_sync(broker.stop)
                await anyio.sleep(OUTAGE)
                await anyio.to_thread.run_sync(broker.start)
                await create_topic(broker.address, topic, partitions=3)  # memory storage: the topic is gone too
                restarted = time.monotonic()
                await anyio.sleep(3.0)
                load.stop.set()
        assert set(load.statuses) <= {200, 503}, load.statuses
        assert load.slow > 0 or load.statuses.get(503, 0) > 0, "clients saw no backpressure during the outage"
        assert set(load.acked) == set(load.sent)
        after = {page for page, when in load.acked.items() if when >= restarted}
        pages = {json.loads(r.value)["payload"]["url"] for r in await read_records(broker.address, topic)}
        assert after and after <= pages
    finally:
        broker.stop()


# --- a real ``streamer run``: start errors and secrets ------------------------------------------------------


def run_cli(tmp_path: Path, text: str, env: dict[str, str], seconds: float) -> tuple[int, str]:
    """``streamer run`` on ``text``; SIGTERM after ``seconds`` if still running. Its exit status and output."""
    spec = tmp_path / "pipeline.yml"
    spec.write_text(text)
    process = subprocess.Popen(
        [sys.executable, "-m", "streamer", "run", "--log-level", "debug", str(spec)],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    return process.returncode, output.decode()


def cli_pipeline(brokers: str, topic: str, extra: str = "") -> str:
    return f"""
inputs:
  web: {{type: http, port: {free_port()}}}
registry:
  repositories: [{{type: file, path: "{SCHEMAS}"}}]
sinks:
  events:
    type: kafka
    brokers: {brokers}
    topic: {topic}
    idempotent: false
    request_timeout: 3
{extra}
"""


def test_unreachable_broker_at_start_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    need_tansu()
    port = free_port()
    status, output = run_cli(tmp_path, cli_pipeline(f"127.0.0.1:{port}", "events"), {}, 30)
    assert status == 1, output
    assert "Traceback" not in output
    line = next(line for line in output.splitlines() if "pipeline failed" in line)
    assert f"sink events: cannot reach Kafka at 127.0.0.1:{port}" in line and "check `brokers`" in line


def test_missing_topic_at_start_is_one_line(tmp_path: Path, kafka: str, topic: str) -> None:
    status, output = run_cli(tmp_path, cli_pipeline(kafka, topic), {}, 30)
    assert status == 1, output
    assert "Traceback" not in output
    assert f"sink events: topic '{topic}' does not exist; create it, or set create_topic" in output


def test_the_sasl_password_never_reaches_the_log(tmp_path: Path, kafka: str, topic: str) -> None:
    # Tansu runs without authentication: the SASL handshake fails and the start error is logged; at debug level
    # aiokafka logs its own steps too. The password, given through the environment, appears nowhere.
    password = f"pw-{uuid.uuid4().hex}"
    sasl = '    sasl: {mechanism: SCRAM-SHA-256, username: streamer, password: "${KAFKA_PASSWORD}"}'
    status, output = run_cli(tmp_path, cli_pipeline(kafka, topic, sasl), {"KAFKA_PASSWORD": password}, 20)
    assert status == 1 and "pipeline failed: KafkaSinkError: sink events: cannot reach Kafka" in output, output
    assert "SaslHandShake" in output  # the debug log did cover the authentication
    assert password not in output
    assert "Traceback" not in output, output
