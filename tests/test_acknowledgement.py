"""A request is answered only after every required sink holds its events; backpressure is bounded.

Every test runs on both backends and with the request's schema cached or not (``cache``): cached, an
asyncio request is answered from the server's callbacks (``Delivery.on_done``), with no task; not
cached, it waits for the schema, and its delivery, in a task. Both paths must keep the same promises.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support import CACHES, http_port, serving, sink, wait_until, worker

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("cache", CACHES)]

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


async def post(
    port: int, body: object = EVENT, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"http://127.0.0.1:{port}/events", json=body, headers=headers)


def written(lines: list[bytes]) -> list[tuple[str, object]]:
    """(schema, payload) of each envelope a controlled sink wrote."""
    return [(e["schema"], e["payload"]) for e in map(json.loads, lines)]


ONE_EVENT = [("iglu:com.example/page_view/jsonschema/1-0-0", {"url": "https://example.com/"})]


async def test_a_slow_sink_holds_the_response_until_written(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(), tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.block()
        answered: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                answered.append(await post(http_port(p)))

            tg.start_soon(send)
            await primary.waiting.wait()
            await anyio.sleep(0.2)  # time enough for a wrong early answer to arrive
            assert answered == [], "answered before the required sink wrote the event"
            assert primary.lines == []
            primary.release()
        assert answered[0].status_code == 200
        assert answered[0].json() == {"received": 1, "invalid": 0}
        assert written(primary.lines) == ONE_EVENT


async def test_a_failing_required_sink_gives_5xx(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(primary="{retries: 1, retry_backoff: 0.01}"), tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.fail_with = OSError("disk on fire")
        response = await post(http_port(p))
        assert response.status_code == 500
        assert response.json() == {"error": "sink_failed", "message": "sink 'primary' failed to write: disk on fire"}
        assert primary.attempts == 2  # the first try and one retry
        assert primary.lines == []
        assert p.statistics()["primary"] == {
            "written": 0, "failed": 1, "dropped": 0, "dead_lettered": 0, "overflowed": 0, "buffered": 0,
        }  # fmt: skip


async def test_a_failing_best_effort_sink_does_not_fail_the_request(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(backup="{required: false, retries: 0}"), tmp_path, cache) as p:
        sink(p, "backup").fail_with = OSError("backup down")
        for _ in range(2):
            response = await post(http_port(p), [EVENT] * 2)
            assert (response.status_code, response.json()) == (200, {"received": 2, "invalid": 0})
        assert written(sink(p, "primary").lines) == ONE_EVENT * 4
        await wait_until(lambda: sink(p, "backup").attempts == 2, what="the backup sink tried both")
        await wait_until(lambda: p.statistics()["backup"]["dropped"] == 4, what="the backup sink gave up")
        assert p.statistics() == {
            "primary": {"written": 4, "failed": 0, "dropped": 0, "dead_lettered": 0, "overflowed": 0, "buffered": 0},
            "backup": {"written": 0, "failed": 0, "dropped": 4, "dead_lettered": 0, "overflowed": 0, "buffered": 0},
        }


async def test_a_blocked_sink_bounds_what_is_accepted_and_holds_the_clients(tmp_path: Path, cache: str) -> None:
    clients = 20
    async with serving(pipeline(primary="{buffer: 4, batch_size: 1}"), tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.block()
        stream = worker(p, "primary").send_stream
        responses: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                responses.append(await post(http_port(p)))

            for _ in range(clients):
                tg.start_soon(send)
            await primary.waiting.wait()  # the first request's batch is in the sink, which holds it

            def arrived() -> int:
                stats = stream.statistics()
                return stats.current_buffer_used + stats.tasks_waiting_send

            await wait_until(lambda: arrived() == clients - 1, what="every other request queued or waiting")
            # One unit in the sink's write, `buffer` units queued, the rest wait for room in their handlers.
            assert stream.statistics().current_buffer_used == 4
            assert stream.statistics().tasks_waiting_send == clients - 5
            assert primary.attempts == 1
            assert responses == [], "a client was answered while its events were not written"
            primary.release()
        assert [r.status_code for r in responses] == [200] * clients
        assert written(primary.lines) == ONE_EVENT * clients
        assert primary.attempts == clients  # batch_size 1: one write per request
        # The copies for the other sink were sent too, also those of requests that waited for room.
        await wait_until(lambda: len(sink(p, "backup").lines) == clients, what="the backup sink got every event")


async def test_a_blocked_sink_times_requests_out_with_503_and_retry_after(tmp_path: Path, cache: str) -> None:
    spec = pipeline(
        primary="{buffer: 4, batch_size: 1}",
        http=", request_timeout: 0.5, retry_after: 7, cors: {allow_origins: [https://shop.example]}"
        ", cookie: {name: sid}",
    )
    async with serving(spec, tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.block()
        responses: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                responses.append(await post(http_port(p), headers={"origin": "https://shop.example"}))

            for _ in range(20):
                tg.start_soon(send)
        assert [r.status_code for r in responses] == [503] * 20
        assert [r.headers["retry-after"] for r in responses] == ["7"] * 20
        assert [r.headers["connection"] for r in responses] == ["close"] * 20  # cut short: start afresh
        # A browser page may read it.
        assert {r.headers["access-control-allow-origin"] for r in responses} == {"https://shop.example"}
        assert [r.headers["set-cookie"].startswith("sid=") for r in responses] == [True] * 20
        assert responses[0].json() == {
            "error": "timeout", "message": "the events were not written within 0.5s; retry later",
        }  # fmt: skip
        primary.release()
        # Once the sink recovers the pipeline serves again.
        response = await post(http_port(p))
        assert (response.status_code, response.json()) == (200, {"received": 1, "invalid": 0})


async def test_a_unit_with_no_required_copy_is_answered_at_once(tmp_path: Path, cache: str) -> None:
    spec = pipeline(primary="{required: false}")
    async with serving(spec, tmp_path, cache) as p:
        sink(p, "primary").block()
        sink(p, "backup").block()
        with anyio.fail_after(5):
            response = await post(http_port(p))
        assert (response.status_code, response.json()) == (200, {"received": 1, "invalid": 0})
        assert sink(p, "primary").lines == [] and sink(p, "backup").lines == []  # still held by the sinks
        sink(p, "primary").release()
        sink(p, "backup").release()


async def test_a_required_sink_is_waited_for_and_a_blocked_best_effort_one_is_not(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(), tmp_path, cache) as p:
        sink(p, "backup").block()
        with anyio.fail_after(5):
            response = await post(http_port(p))
        assert (response.status_code, response.json()) == (200, {"received": 1, "invalid": 0})
        assert written(sink(p, "primary").lines) == ONE_EVENT
        assert sink(p, "backup").lines == []
        sink(p, "backup").release()


async def test_every_required_sink_is_waited_for(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(backup="{required: true}"), tmp_path, cache) as p:
        primary, backup = sink(p, "primary"), sink(p, "backup")
        backup.block()
        answered: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                answered.append(await post(http_port(p)))

            tg.start_soon(send)
            await backup.waiting.wait()
            await wait_until(lambda: len(primary.lines) == 1, what="the primary sink wrote the event")
            await anyio.sleep(0.2)  # time enough for a wrong early answer to arrive
            assert answered == [], "answered when one of two required sinks had written the event"
            backup.release()
        assert [r.status_code for r in answered] == [200]
        assert written(backup.lines) == ONE_EVENT


async def test_batch_of_events_in_one_request_is_one_unit(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(), tmp_path, cache) as p:
        response = await post(http_port(p), [EVENT] * 25)
        assert response.status_code == 200
        assert response.json() == {"received": 25, "invalid": 0}
        assert written(sink(p, "primary").lines) == ONE_EVENT * 25
        assert sink(p, "primary").attempts == 1


async def test_a_kill_ends_requests_in_flight_at_once(tmp_path: Path, cache: str) -> None:
    # The HTTP server shields each connection from the scopes around it; a kill must still reach a
    # handler waiting for its delivery.
    with anyio.fail_after(5):
        async with serving(pipeline(), tmp_path, cache) as p:
            primary = sink(p, "primary")
            primary.block()
            outcome: list[object] = []

            async def send() -> None:
                try:
                    outcome.append((await post(http_port(p))).status_code)
                except httpx.HTTPError as exc:
                    outcome.append(type(exc))

            async with anyio.create_task_group() as tg:
                tg.start_soon(send)
                await primary.waiting.wait()
                assert outcome == []  # still waiting for the blocked sink
                p.kill()
            # The connection is closed without an answer: the client will send the events again.
            assert outcome == [httpx.RemoteProtocolError]
    assert p.exit_code == 130
    assert primary.lines == []


async def test_a_client_that_leaves_while_its_events_are_written_loses_nothing(tmp_path: Path, cache: str) -> None:
    async with serving(pipeline(), tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.block()
        async with anyio.create_task_group() as tg:
            tg.start_soon(post, http_port(p))
            await primary.waiting.wait()
            tg.cancel_scope.cancel()  # the client gives up while the sink holds the write
        primary.release()
        await wait_until(lambda: len(primary.lines) == 1, what="the event written")
        # The event was written though nobody was left to tell, and the server goes on.
        response = await post(http_port(p))
        assert (response.status_code, response.json()) == (200, {"received": 1, "invalid": 0})
        assert written(primary.lines) == ONE_EVENT * 2


async def test_the_answer_after_the_write_carries_the_browser_headers(tmp_path: Path, cache: str) -> None:
    spec = pipeline(http=", cors: {allow_origins: [https://shop.example]}, cookie: {name: sid}")
    async with serving(spec, tmp_path, cache) as p:
        primary = sink(p, "primary")
        primary.block()
        answered: list[httpx.Response] = []
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                answered.append(await post(http_port(p), headers={"origin": "https://shop.example"}))

            tg.start_soon(send)
            await primary.waiting.wait()
            primary.release()
        [response] = answered
        assert (response.status_code, response.json()) == (200, {"received": 1, "invalid": 0})
        assert response.headers["access-control-allow-origin"] == "https://shop.example"
        assert response.headers["access-control-allow-credentials"] == "true"
        [event] = [json.loads(line) for line in primary.lines]
        # The identity minted for the request is the one set in the answer.
        assert response.cookies["sid"] == event["source"]["metadata"]["network_user_id"]


async def test_a_best_effort_copy_that_waited_for_room_does_not_acknowledge_the_unit(
    tmp_path: Path, cache: str
) -> None:
    async with serving(pipeline(backup="{required: false, buffer: 1, batch_size: 1}"), tmp_path, cache) as p:
        primary, backup = sink(p, "primary"), sink(p, "backup")
        primary.block()
        backup.block()
        statuses: list[int] = []

        async def send() -> None:
            statuses.append((await post(http_port(p))).status_code)

        async with anyio.create_task_group() as tg:
            tg.start_soon(send)
            await backup.waiting.wait()  # the first unit is in the backup's write
            tg.start_soon(send)
            backup_stream = worker(p, "backup").send_stream
            await wait_until(lambda: backup_stream.statistics().current_buffer_used == 1, what="the second queued")
            tg.start_soon(send)
            await wait_until(lambda: backup_stream.statistics().tasks_waiting_send == 1, what="the third waiting")
            backup.release()  # the backup writes all three; the required sink still holds them
            await wait_until(lambda: len(backup.lines) == 3, what="the backup wrote every unit")
            await anyio.sleep(0.2)  # time enough for a wrong early answer to arrive
            assert statuses == [], "answered before the required sink wrote the events"
            primary.release()
        assert statuses == [200] * 3
        assert written(primary.lines) == ONE_EVENT * 3
