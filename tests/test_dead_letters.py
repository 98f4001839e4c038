"""Delivery for every sink: error classes, partial retries, jittered backoff, dead letters, when_full."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from streamer.core.components import DeliverySpec
from streamer.core.config import ConfigError
from streamer.core.runtime import retry_delay
from tests.support import compile_text, http_port, read_jsonl, run_to_end, running, sink

pytestmark = pytest.mark.anyio

SCHEMA = "iglu:com.example/page_view/jsonschema/1-0-0"


def event(n: int) -> dict[str, Any]:
    return {"schema": SCHEMA, "data": {"url": f"https://example.com/{n}"}}


def pipeline(sinks: str, http: str = "") -> str:
    return f"""
inputs:
  web: {{type: http, port: 0{http}}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
{sinks}
"""


async def post(port: int, body: object, timeout: float = 10.0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(f"http://127.0.0.1:{port}/events", json=body)


# --- the backoff --------------------------------------------------------------------------------


def test_retry_delay_doubles_with_equal_jitter_up_to_the_cap() -> None:
    settings = DeliverySpec(retry_backoff=0.1, retry_max_backoff=1.0)
    lowest = [retry_delay(settings, retry, lambda low, high: low) for retry in range(1, 7)]
    highest = [retry_delay(settings, retry, lambda low, high: high) for retry in range(1, 7)]
    assert lowest == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert highest == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    drawn = {retry_delay(settings, 3) for _ in range(50)}
    assert all(0.2 <= d <= 0.4 for d in drawn) and len(drawn) > 1  # jitter: not one fixed value


# --- error classes ------------------------------------------------------------------------------


async def test_a_batch_error_retries_only_the_records_it_names(tmp_path: Path) -> None:
    sinks = "  flaky: {type: flaky, delivery: {retries: 2, retry_backoff: 0.01, batch_size: 10}}"
    async with running(pipeline(sinks), tmp_path) as p:
        flaky = sink(p, "flaky")
        flaky.reject = {"will-fail"}  # filled in below, once the ids are known
        # One request of three events: the sink refuses the second on its first attempt.
        body = [event(1), event(2), event(3)]
        original_write = flaky.write

        async def write_refusing_second(batch: Any) -> None:
            if len(flaky.attempts) == 0:
                flaky.reject = {batch.envelopes[1].id}
            await original_write(batch)

        flaky.write = write_refusing_second
        response = await post(http_port(p), body)
        assert response.status_code == 200
        assert len(flaky.attempts) == 2
        first, second = flaky.attempts
        assert len(first) == 3 and second == [first[1]]  # only the refused record is written again
        assert sorted(flaky.written) == sorted(first)  # each exactly once
        assert len(flaky.written) == 3


async def test_a_fatal_error_is_not_retried(tmp_path: Path) -> None:
    sinks = "  flaky: {type: flaky, delivery: {retries: 5, retry_backoff: 0.01}}"
    async with running(pipeline(sinks), tmp_path) as p:
        sink(p, "flaky").fatal = True
        response = await post(http_port(p), event(1))
        assert response.status_code == 500
        assert response.json()["error"] == "sink_failed"
        assert len(sink(p, "flaky").attempts) == 1


# --- dead letters -------------------------------------------------------------------------------


async def test_a_required_sink_that_gives_up_is_acknowledged_once_its_dead_letters_are_written(
    tmp_path: Path,
) -> None:
    sinks = """
  store: {type: flaky, delivery: {retries: 2, retry_backoff: 0.01, dead_letter: dlq}}
  dlq: {type: file, path: dead.jsonl, route: dead_letters}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        store = sink(p, "store")
        store.down = True
        response = await post(http_port(p), [event(1), event(2)])
        assert response.status_code == 200
        assert response.json() == {"received": 2, "invalid": 0}
        assert len(store.attempts) == 3  # the first try and two retries
        stats = p.statistics()["store"]
        assert (stats["dead_lettered"], stats["failed"], stats["written"]) == (2, 0, 0)
    letters = read_jsonl(tmp_path / "dead.jsonl")
    assert len(letters) == 2
    for n, letter in enumerate(letters, start=1):
        info = letter["dead_letter"]
        assert sorted(letter) == ["dead_letter", "envelope"]
        assert (info["sink"], info["reason"], info["attempts"]) == ("store", "failed", 3)
        assert info["error"] == "RetryableError('connection refused')"
        assert info["time"].endswith("Z")
        assert letter["envelope"]["payload"] == {"url": f"https://example.com/{n}"}
        assert letter["envelope"]["schema"] == SCHEMA
        assert letter["envelope"]["id"] == store.attempts[0][n - 1]  # the original envelope, same id


async def test_a_fatal_error_goes_to_dead_letters_at_once(tmp_path: Path) -> None:
    sinks = """
  store: {type: flaky, delivery: {retries: 5, retry_backoff: 0.01, dead_letter: dlq}}
  dlq: {type: file, path: dead.jsonl, route: dead_letters}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        sink(p, "store").fatal = True
        response = await post(http_port(p), event(1))
        assert response.status_code == 200
        assert len(sink(p, "store").attempts) == 1
    (letter,) = read_jsonl(tmp_path / "dead.jsonl")
    assert letter["dead_letter"]["error"] == "FatalError('record too large')"
    assert letter["dead_letter"]["attempts"] == 1


async def test_only_the_refused_records_of_a_batch_become_dead_letters(tmp_path: Path) -> None:
    sinks = """
  store: {type: flaky, delivery: {retries: 1, retry_backoff: 0.01, dead_letter: dlq}}
  dlq: {type: file, path: dead.jsonl, route: dead_letters}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        store = sink(p, "store")
        store.reject_times = 99
        original_write = store.write

        async def write_refusing_first(batch: Any) -> None:
            if not store.attempts:
                store.reject = {batch.envelopes[0].id}
            await original_write(batch)

        store.write = write_refusing_first
        response = await post(http_port(p), [event(1), event(2), event(3)])
        assert response.status_code == 200
        first = store.attempts[0]
        assert store.written == first[1:]
        assert store.attempts[1:] == [[first[0]]]
    (letter,) = read_jsonl(tmp_path / "dead.jsonl")
    assert letter["envelope"]["id"] == first[0]
    assert letter["dead_letter"]["error"] == "BatchError('1 of 1 records refused')"  # the last attempt's error
    assert letter["dead_letter"]["attempts"] == 2


async def test_a_failing_dead_letter_sink_fails_the_unit(tmp_path: Path) -> None:
    sinks = """
  store: {type: flaky, delivery: {retries: 0, dead_letter: dlq}}
  dlq: {type: flaky, route: dead_letters, delivery: {retries: 0}}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        sink(p, "store").down = True
        sink(p, "dlq").down = True
        response = await post(http_port(p), event(1))
        assert response.status_code == 500
        assert response.json()["error"] == "sink_failed"
        assert "'dlq'" in response.json()["message"]


async def test_dead_letters_follow_a_chain(tmp_path: Path) -> None:
    sinks = """
  store: {type: flaky, delivery: {retries: 0, dead_letter: kafka_dlq}}
  kafka_dlq: {type: flaky, route: dead_letters, delivery: {retries: 0, dead_letter: file_dlq}}
  file_dlq: {type: file, path: dead.jsonl, route: dead_letters}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        sink(p, "store").down = True
        sink(p, "kafka_dlq").down = True
        response = await post(http_port(p), event(1))
        assert response.status_code == 200
    (letter,) = read_jsonl(tmp_path / "dead.jsonl")
    assert letter["dead_letter"]["sink"] == "store"  # why it was first given up on, not the hop that failed
    assert letter["envelope"]["payload"] == {"url": "https://example.com/1"}


# --- shadow sinks: when_full ----------------------------------------------------------------------


async def test_a_full_best_effort_sink_sends_its_overflow_to_dead_letters_without_slowing_the_required_one(
    tmp_path: Path,
) -> None:
    sinks = """
  store: {type: file, path: store.jsonl}
  shadow: {type: controlled, delivery: {required: false, buffer: 2, when_full: dead_letter, dead_letter: dlq}}
  dlq: {type: file, path: dead.jsonl, route: dead_letters}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        shadow = sink(p, "shadow")
        shadow.block()  # the shadow's server hangs
        port = http_port(p)
        statuses = []
        with anyio.fail_after(10):  # every answer comes while the shadow is still blocked
            for n in range(20):
                statuses.append((await post(port, event(n))).status_code)
        assert statuses == [200] * 20
        # One unit is in the shadow's blocked write, two wait in its buffer, the rest overflowed.
        assert p.statistics()["shadow"]["overflowed"] == 17
        assert p.statistics()["shadow"]["dead_lettered"] == 17
        shadow.release()
    assert len(read_jsonl(tmp_path / "store.jsonl")) == 20
    letters = read_jsonl(tmp_path / "dead.jsonl")
    assert len(letters) == 17
    assert {letter["dead_letter"]["reason"] for letter in letters} == {"overflow"}
    assert {letter["dead_letter"]["attempts"] for letter in letters} == {0}
    shadow_ids = {json.loads(line)["id"] for line in shadow.lines}
    letter_ids = {letter["envelope"]["id"] for letter in letters}
    store_ids = {row["id"] for row in read_jsonl(tmp_path / "store.jsonl")}
    assert shadow_ids | letter_ids == store_ids and not shadow_ids & letter_ids  # every event, once


async def test_when_full_drop_counts_what_it_discards(tmp_path: Path) -> None:
    sinks = """
  store: {type: file, path: store.jsonl}
  shadow: {type: controlled, delivery: {required: false, buffer: 1, when_full: drop}}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        sink(p, "shadow").block()
        port = http_port(p)
        for n in range(6):
            assert (await post(port, event(n))).status_code == 200
        assert p.statistics()["shadow"]["dropped"] == 4  # one in the blocked write, one in the buffer
        sink(p, "shadow").release()


async def test_max_in_flight_overlaps_writes(tmp_path: Path) -> None:
    sinks = "  store: {type: flaky, delivery: {max_in_flight: 4, batch_size: 1}}"
    async with running(pipeline(sinks), tmp_path) as p:
        store = sink(p, "store")
        store.delay = 0.2
        port = http_port(p)
        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(post, port, event(n))
        assert store.peak_in_flight == 4
        assert len(store.written) == 8


async def test_a_sink_that_maps_rows_gets_no_json_lines(tmp_path: Path) -> None:
    sinks = "  rows: {type: rows, route: all}"
    async with running(pipeline(sinks), tmp_path) as p:
        response = await post(http_port(p), [event(1), {"schema": SCHEMA, "data": {"title": 3}}])
        assert response.status_code == 200
        rows = sink(p, "rows")
        assert [valid for _, valid in rows.rows] == [True, False]
        assert rows.data_seen == [b""]


# --- lint -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sinks", "message"),
    [
        (
            "  a: {type: file, path: a, delivery: {dead_letter: b}}\n  c: {type: file, path: c}",
            "test.yml:7:52: no sink named `b` (sinks: a, c)",
        ),
        (
            "  store: {type: file, path: a, delivery: {dead_letter: dlx}}\n  dlq: {type: file, path: c}",
            "test.yml:7:56: no sink named `dlx`; did you mean `dlq`?",
        ),
        (
            "  a: {type: file, path: a, delivery: {dead_letter: a}}",
            "test.yml:7:52: sink `a` cannot be its own dead-letter sink; name another",
        ),
        (
            "  a: {type: file, path: a, delivery: {dead_letter: b}}\n"
            "  b: {type: file, path: b, delivery: {dead_letter: a}}",
            "test.yml:7:52: dead letters would loop (a -> b -> a); the last sink of a dead-letter chain must have "
            "none\ntest.yml:8:52: dead letters would loop (b -> a -> b); the last sink of a dead-letter chain must "
            "have none",
        ),
        (
            "  a: {type: file, path: a, delivery: {dead_letter: r}}\n  r: {type: rows}",
            "test.yml:7:52: sink `r` (rows) stores rows, not the dead-letter records (the envelope with the "
            "failing sink, error, attempts and time); name a sink that writes JSON lines, such as a `file` or "
            "`kafka` sink",
        ),
        (
            "  a: {type: file, path: a}\n  dlq: {type: file, path: d, route: dead_letters}",
            "test.yml:8:37: sink `dlq` takes only dead letters, but no sink names it: add "
            "`delivery: {dead_letter: dlq}` to the sinks it backs up, or choose another route",
        ),
        (
            "  a: {type: file, path: a, delivery: {when_full: drop}}",
            "test.yml:7:50: a required sink can only block when full (it must hold every event it acknowledges); "
            "write `required: false` to make `a` a best-effort shadow sink, or `when_full: block`",
        ),
        (
            "  a: {type: file, path: a, delivery: {required: false, when_full: dead_letter}}",
            "test.yml:7:67: `when_full: dead_letter` needs `dead_letter: <sink name>` next to it "
            "(or `when_full: drop` to discard the overflow)",
        ),
    ],
)
def test_lint_refuses_bad_dead_letter_settings(sinks: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        compile_text(pipeline(sinks), {"SCHEMAS": "schemas"})
    assert [str(p) for p in raised.value.problems] == message.split("\n")


# --- replay ---------------------------------------------------------------------------------------


async def test_dead_letters_replay_through_the_file_input_as_the_original_envelopes(tmp_path: Path) -> None:
    sinks = """
  store: {type: flaky, delivery: {retries: 0, dead_letter: dlq}}
  dlq: {type: file, path: dead.jsonl, route: dead_letters}
"""
    async with running(pipeline(sinks), tmp_path) as p:
        sink(p, "store").down = True
        assert (await post(http_port(p), [event(1), {"schema": SCHEMA, "data": {"title": 5}}])).status_code == 200
    letters = read_jsonl(tmp_path / "dead.jsonl")
    assert len(letters) == 1  # the invalid event never reached `store` (route: valid)
    replay = """
inputs:
  backfill: {type: file, path: dead.jsonl}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  store: {type: file, path: replayed.jsonl}
"""
    await run_to_end(replay, tmp_path)
    (replayed,) = read_jsonl(tmp_path / "replayed.jsonl")
    original = letters[0]["envelope"]
    assert "dead_letter" not in replayed
    for field in ("id", "collector_tstamp", "payload", "schema", "protocol", "source"):
        assert replayed[field] == original[field], field
    assert replayed["valid"] is True
