"""Every request that ever broke a property, replayed on both backends on every run.

``tests/fuzz/corpus/*.json``: ``route`` (the route type it was aimed at), ``problem`` (what it did),
``request`` (the raw bytes, as latin-1 text) and, optionally, ``expect``: the exact answer now due
(``status`` and one of ``json``, ``text``, ``content_type``). test_routes.py adds a file here
(``found-<route>-<hash>.json``) when it finds a new failing case; give it an ``expect`` and a
better name once the defect is fixed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.fuzz.harness import CORPUS, PIPELINE, check_responses, written
from tests.fuzz.wire import Request, Response, exchange
from tests.support import http_port, running

pytestmark = pytest.mark.anyio

CASES = sorted(CORPUS.glob("*.json"))


def check_expected(expect: dict[str, Any], response: Response) -> None:
    assert response.status == expect["status"], response
    if "json" in expect:
        assert response.headers.get("content-type") == "application/json", response
        assert response.json() == expect["json"]
    if "text" in expect:
        assert response.body.decode() == expect["text"], response
    if "content_type" in expect:
        assert response.headers.get("content-type") == expect["content_type"], response


def test_the_corpus_is_well_formed() -> None:
    assert CASES, "the corpus is empty"
    for path in CASES:
        case = json.loads(path.read_text())
        assert {"route", "problem", "request"} <= case.keys(), path.name
        assert case["request"].encode("latin-1"), path.name


async def test_every_corpus_case_is_answered_as_due(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="streamer")
    async with running(PIPELINE, tmp_path) as pipeline:
        port = http_port(pipeline)
        for path in CASES:
            case = json.loads(path.read_text())
            raw = case["request"].encode("latin-1")
            responses = await exchange(port, raw)
            # The properties the fuzz tests check, on a request object that only knows it was sent whole.
            check_responses(Request("?", "?"), responses)
            if "expect" in case:
                assert len(responses) == 1, (path.name, responses)
                check_expected(case["expect"], responses[0])
        [health] = await exchange(port, b"GET /health HTTP/1.1\r\nconnection: close\r\n\r\n")
        assert (health.status, health.json()) == (200, {"status": "ok"})
    written(tmp_path)  # every line written is an envelope
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
