from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import http_port, read_jsonl, running

pytestmark = pytest.mark.anyio

PIPELINE = """
inputs:
  web: {type: http, port: 0}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


async def test_valid_and_invalid_events_land_in_their_files(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/events"
        async with httpx.AsyncClient() as client:
            ok = await client.post(url, json={"schema": "iglu:com.example/page_view/jsonschema/1-0-0",
                                              "data": {"url": "https://example.com/"}})
            bad = await client.post(url, json={"schema": "iglu:com.example/page_view/jsonschema/1-0-0",
                                               "data": {"title": 1}})
        assert (ok.status_code, ok.json()) == (200, {"received": 1, "invalid": 0})
        assert (bad.status_code, bad.json()) == (200, {"received": 1, "invalid": 1})
    valid = read_jsonl(tmp_path / "valid.jsonl")
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["payload"] for e in valid] == [{"url": "https://example.com/"}]
    assert [(e["valid"], e["errors"]) for e in valid] == [(True, None)]
    assert [e["payload"] for e in invalid] == [{"title": 1}]
    assert invalid[0]["valid"] is False
    schema = "iglu:com.example/page_view/jsonschema/1-0-0"
    assert sorted(invalid[0]["errors"], key=lambda e: e["keyword"]) == [
        {"path": "$", "keyword": "required", "message": '"url" is a required property', "schema": schema},
        {"path": "$.title", "keyword": "type", "message": '1 is not of type "string"', "schema": schema},
    ]
