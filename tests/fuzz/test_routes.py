"""Hostile requests against every route type, over real sockets, on both backends.

For each route type a pipeline serving every route runs once; hypothesis (deterministic, bounded)
draws batches of mutated requests from the route's valid ones and sends each batch at once, with a
well-formed canary request among them. Properties, checked on every batch:

- no 5xx other than 503 by backpressure, and every refusal is a JSON body naming the problem;
- ``/health`` answers between batches, and the pipeline drains cleanly at the end;
- nothing is logged at ERROR (a handler or a connection failing is a bug);
- every canary gets the answer it gets alone, and its events are written exactly as when it is sent
  alone to a clean pipeline (but for the envelope ``id`` and ``collector_tstamp``).

A failing case is saved to ``tests/fuzz/corpus/`` (see test_corpus.py, which replays the corpus).
The cases are the same on every run; to search further::

    STREAMER_FUZZ_EXPLORE=1 STREAMER_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/fuzz -x
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context

from tests.fuzz.harness import PIPELINE, by_marker, check_responses, same_answer, save_case, written
from tests.fuzz.mutations import MUTATIONS, ROUTES, build, seeds
from tests.fuzz.wire import Request, Response, exchange
from tests.support import http_port, running

pytestmark = pytest.mark.anyio

EXAMPLES = int(os.environ.get("STREAMER_FUZZ_EXAMPLES", "25"))
"""Batches per route and backend (each up to BATCH hostile requests and one canary); raise it to search longer."""
EXPLORE = os.environ.get("STREAMER_FUZZ_EXPLORE", "") == "1"
"""Draw new cases on each run instead of the same ones (CI keeps the default: the same cases every run)."""
BATCH = 6

mutation = st.tuples(st.sampled_from([*sorted(MUTATIONS), "cut"]), st.integers(0, 1 << 16))
case = st.tuples(st.integers(0, 11), st.lists(mutation, min_size=1, max_size=3))
batches = st.lists(case, min_size=1, max_size=BATCH)


def marker(route: str, index: int) -> str:
    return f"https://canary.example/{route}/{index}"


def canaries(route: str) -> list[tuple[str, Request]]:
    """The route's valid requests, each marked; the purge is left out (its answer counts cached schemas)."""
    out = []
    for index in range(len(seeds(route, ""))):
        request = seeds(route, marker(route, index))[index]
        if request.path != "/c/purge":
            out.append((marker(route, index), request))
    return out


async def alone(route: str, directory: Path) -> tuple[dict[str, Response], dict[str, Counter[str]]]:
    """Each canary sent alone to a clean pipeline: its answer and the envelopes written for it."""
    directory.mkdir()
    answers = {}
    async with running(PIPELINE, directory) as pipeline:
        port = http_port(pipeline)
        for name, request in canaries(route):
            [answers[name]] = await exchange(port, request.encode())
    return answers, by_marker(written(directory), [name for name, _ in canaries(route)])


@pytest.mark.parametrize("route", ROUTES)
async def test_hostile_requests(route: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamer")
    reference, reference_events = await alone(route, tmp_path / "alone")
    marked = canaries(route)
    sent: Counter[str] = Counter()
    directory = tmp_path / "fuzz"
    directory.mkdir()

    async with running(PIPELINE, directory) as pipeline:
        port = http_port(pipeline)

        async def send_batch(requests: list[Request], canary: tuple[str, Request]) -> list[Any]:
            results: list[Any] = [None] * (len(requests) + 1)

            async def one(index: int, raw: bytes) -> None:
                try:
                    results[index] = await exchange(port, raw)
                except Exception as exc:  # reported with its request below
                    results[index] = exc

            async with anyio.create_task_group() as tg:
                for index, request in enumerate(requests):
                    tg.start_soon(one, index, request.encode())
                tg.start_soon(one, len(requests), canary[1].encode())
            health = await exchange(port, b"GET /health HTTP/1.1\r\nconnection: close\r\n\r\n")
            return [*results, health]

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=not EXPLORE,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(batch=batches, which=st.integers(0, len(marked) - 1))
        def hostile_batch(batch: list[tuple[int, list[tuple[str, int]]]], which: int) -> None:
            requests = [build(route, f"https://hostile.example/{route}", seed, list(ops)) for seed, ops in batch]
            canary = marked[which]
            *results, canary_result, health = anyio.from_thread.run(send_batch, requests, canary)
            for request, result in zip(requests, results, strict=True):
                raw = request.encode()
                try:
                    if isinstance(result, BaseException):
                        raise AssertionError(f"the exchange failed: {result!r}")
                    check_responses(request, result)
                except AssertionError as exc:
                    if current_build_context().is_final:
                        saved = save_case(route, raw, str(exc))
                        raise AssertionError(f"{exc}\nrequest: {raw[:2000]!r}\nsaved to {saved}") from None
                    raise
            assert not isinstance(canary_result, BaseException), canary_result
            assert len(canary_result) == 1 and same_answer(reference[canary[0]], canary_result[0]), (
                canary[0], reference[canary[0]], canary_result,
            )
            sent[canary[0]] += 1
            assert [(r.status, r.json()) for r in health] == [(200, {"status": "ok"})]

        await anyio.to_thread.run_sync(hostile_batch)

    # The pipeline drained (running() would raise if it had failed); now what it wrote.
    events = by_marker(written(directory), [name for name, _ in marked])
    for name, _ in marked:
        expected = Counter({line: count * sent[name] for line, count in reference_events[name].items()})
        assert events[name] == expected, name
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
