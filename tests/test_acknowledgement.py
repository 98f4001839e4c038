"""A request is answered only after every required sink holds its events; backpressure is bounded."""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest

from tests.support import http_port, running, sink

pytestmark = pytest.mark.anyio

EVENT = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": "https://example.com/"}}


def pipeline(*, primary: str = "{}", backup: str = "{required: false}", http: str = "") -> str:
    return f"""
inputs:
  web: {{type: http, port: 0{http}}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  primary: {{type: controlled, route: all, delivery: {primary}}}
  backup: {{type: controlled, route: all, delivery: {backup}}}
"""


async def post(port: int, body: object = EVENT, timeout: float = 10.0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"http://127.0.0.1:{port}/events", json=body)


async def test_a_slow_sink_holds_the_response_until_written(tmp_path: Path) -> None:
    async with running(pipeline(), tmp_path) as p:
        primary = sink(p, "primary")
        primary.block()
        answered: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                answered.append(await post(http_port(p)))

            tg.start_soon(send)
            await primary.waiting.wait()
            await anyio.sleep(0.2)
            assert answered == [], "answered before the required sink wrote the event"
            assert primary.lines == []
            primary.release()
        assert answered[0].status_code == 200
        assert len(primary.lines) == 1


async def test_a_failing_required_sink_gives_5xx(tmp_path: Path) -> None:
    async with running(pipeline(primary="{retries: 1, retry_backoff: 0.01}"), tmp_path) as p:
        primary = sink(p, "primary")
        primary.fail_with = OSError("disk on fire")
        response = await post(http_port(p))
        assert response.status_code == 500
        assert response.json()["error"] == "sink_failed"
        assert "disk on fire" in response.json()["message"]
        assert primary.attempts == 2  # the first try and one retry
        assert primary.lines == []


async def test_a_failing_best_effort_sink_does_not_fail_the_request(tmp_path: Path) -> None:
    async with running(pipeline(backup="{required: false, retries: 0}"), tmp_path) as p:
        sink(p, "backup").fail_with = OSError("backup down")
        response = await post(http_port(p))
        assert response.status_code == 200
        assert len(sink(p, "primary").lines) == 1


async def test_a_blocked_sink_bounds_memory_and_clients_get_503_with_retry_after(tmp_path: Path) -> None:
    spec = pipeline(primary="{buffer: 4, batch_size: 1}", http=", request_timeout: 0.5, retry_after: 7")
    async with running(spec, tmp_path) as p:
        primary = sink(p, "primary")
        primary.block()
        worker = next(w for w in p.workers if w.name == "primary")
        responses: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                responses.append(await post(http_port(p)))

            for _ in range(20):
                tg.start_soon(send)
            await anyio.sleep(0.3)
            # One batch in the sink, at most `buffer` units queued, the rest wait in their handlers.
            assert worker.send_stream.statistics().current_buffer_used <= 4
        assert [r.status_code for r in responses] == [503] * 20
        assert {r.headers["retry-after"] for r in responses} == {"7"}
        assert responses[0].json()["error"] == "timeout"
        assert responses[0].headers["connection"] == "close"  # the handler was cut short: start afresh
        primary.release()
        # Once the sink recovers the pipeline serves again.
        assert (await post(http_port(p))).status_code == 200


async def test_a_unit_with_no_required_copy_is_answered_at_once(tmp_path: Path) -> None:
    spec = pipeline(primary="{required: false}")
    async with running(spec, tmp_path) as p:
        sink(p, "primary").block()
        sink(p, "backup").block()
        with anyio.fail_after(5):
            response = await post(http_port(p))
        assert response.status_code == 200
        sink(p, "primary").release()
        sink(p, "backup").release()


async def test_batch_of_events_in_one_request_is_one_unit(tmp_path: Path) -> None:
    async with running(pipeline(), tmp_path) as p:
        response = await post(http_port(p), [EVENT] * 25)
        assert response.status_code == 200
        assert response.json() == {"received": 25, "invalid": 0}
        assert len(sink(p, "primary").lines) == 25


async def test_a_kill_ends_requests_in_flight_at_once(tmp_path: Path) -> None:
    # The HTTP server shields each connection from the scopes around it; a kill must still reach a
    # handler waiting for its delivery.
    with anyio.fail_after(5):
        async with running(pipeline(), tmp_path) as p:
            sink(p, "primary").block()
            outcome: list[object] = []

            async def send() -> None:
                try:
                    outcome.append((await post(http_port(p))).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(type(exc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await anyio.sleep(0.3)
                assert outcome == []  # still waiting for the blocked sink
                p.kill()
            assert outcome and outcome[0] != 200
    assert p.exit_code == 130


async def test_a_client_that_leaves_while_its_events_are_written_loses_nothing(tmp_path: Path) -> None:
    async with running(pipeline(), tmp_path) as p:
        primary = sink(p, "primary")
        primary.block()
        with anyio.move_on_after(0.3):  # the client gives up while the sink holds the write
            await post(http_port(p))
        await primary.waiting.wait()
        primary.release()
        with anyio.fail_after(5):
            while len(primary.lines) < 1:  # noqa: ASYNC110 - the sink has no event for a write
                await anyio.sleep(0.01)
        # The event was written though nobody was left to tell, and the server goes on.
        assert (await post(http_port(p))).status_code == 200
        assert len(primary.lines) == 2
