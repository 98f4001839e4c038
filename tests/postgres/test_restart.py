"""A PostgreSQL server stopped for 10 s under HTTP load and started again: nothing lost, no 500.

Runs against a throwaway cluster (``initdb`` + ``pg_ctl``, see conftest.py), never the shared server.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.postgres.conftest import Cluster
from tests.support import http_port, running

pytestmark = [pytest.mark.anyio, pytest.mark.services, pytest.mark.timeout(120)]

OUTAGE = 10.0

# Delivery settings: the sink must keep retrying through the whole outage rather than give up (which
# would fail the requests with 500). 40 retries with backoff capped at 1 s span ~30 s, three times the
# outage; the clients meanwhile wait for their answer, or get 503 after request_timeout and retry.
PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    request_timeout: 4
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  pg:
    type: postgres
    dsn: {dsn}
    table: events
    create_table: true
    connect_timeout: 2
    statement_timeout: 5
    delivery: {{retries: 40, retry_backoff: 0.2, retry_max_backoff: 1.0}}
"""


async def test_server_restart_under_load_loses_nothing(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncpg

    caplog.set_level(logging.INFO)
    # The cluster trusts every local connection: the password is ignored, and must be in no log line
    # (the retries log each failed write, with its error).
    dsn = cluster.dsn.replace("postgres@", "postgres:pw-restart-secret@")

    statuses: dict[int, int] = {}
    slow = 0
    sent: list[str] = []
    answered: set[str] = set()
    stop_load = anyio.Event()

    async with running(PIPELINE.format(dsn=dsn), tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/events"

        async def client(number: int) -> None:
            nonlocal slow
            async with httpx.AsyncClient(timeout=60) as http:
                sequence = 0
                while not stop_load.is_set():
                    page = f"https://example.com/{number}/{sequence}"
                    sequence += 1
                    sent.append(page)
                    body = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": page}}
                    while True:  # as a tracker does: retry on 503 (Retry-After), give up on nothing else
                        started = time.monotonic()
                        response = await http.post(url, json=body)
                        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                        if time.monotonic() - started > 1.0:
                            slow += 1
                        if response.status_code != 503:
                            break
                        await anyio.sleep(float(response.headers.get("retry-after", "1")))
                    if response.status_code == 200:
                        answered.add(page)
                    await anyio.sleep(0.01)

        async with anyio.create_task_group() as clients:
            for number in range(8):
                clients.start_soon(client, number)
            await anyio.sleep(1.5)
            await anyio.to_thread.run_sync(cluster.stop, "fast")
            await anyio.sleep(OUTAGE)
            await anyio.to_thread.run_sync(cluster.start)
            await anyio.sleep(2.0)
            stop_load.set()

    assert set(statuses) <= {200, 503}, statuses  # never 500: a restart is retryable, not a failure
    assert slow > 0 or statuses.get(503, 0) > 0, "clients saw no backpressure during the outage"
    assert answered == set(sent)  # every event was eventually acknowledged
    connection = await asyncpg.connect(cluster.dsn)
    try:
        stored = {r["url"] for r in await connection.fetch("SELECT payload->>'url' AS url FROM events")}
    finally:
        await connection.close()
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries, "the sink never had to retry: the outage did not happen?"
    # Nowhere: neither in streamer's lines nor in asyncpg's own (with their tracebacks).
    assert not any("pw-restart-secret" in logging.Formatter().format(r) for r in caplog.records)
    assert set(sent) <= stored  # 0 lost (a 503'd request retried may be stored twice, under two ids)
    assert len(sent) > 100
