"""Self-describing JSON over HTTP: single and batch, configurable root keys, contexts kept and validated."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support import http_port, read_jsonl, running

pytestmark = pytest.mark.anyio

PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
CLICK = "iglu:com.example/button_click/jsonschema/1-0-0"
USER = "iglu:com.example/user/jsonschema/1-0-0"

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    routes:
      - {type: self_describing, path: /events}
      - {type: self_describing, path: /custom, schema_key: $schema, data_key: payload, contexts_key: ctx}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


async def test_single_event_with_contexts_kept(tmp_path: Path) -> None:
    event = {
        "schema": PAGE_VIEW,
        "data": {"url": "https://example.com/", "title": "Home"},
        "contexts": [{"schema": USER, "data": {"user_id": "u1", "plan": "pro"}}],
    }
    async with running(PIPELINE, tmp_path) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://127.0.0.1:{http_port(pipeline)}/events", json=event, headers={"user-agent": "sd-test/1"}
            )
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "invalid": 0}
    [envelope] = read_jsonl(tmp_path / "valid.jsonl")
    assert envelope["protocol"] == "self_describing"
    assert envelope["schema"] == PAGE_VIEW
    assert (envelope["schema_vendor"], envelope["schema_name"], envelope["schema_version"]) == (
        "com.example", "page_view", "1-0-0",
    )
    assert envelope["payload"] == {"url": "https://example.com/", "title": "Home"}
    assert envelope["contexts"] == [{"schema": USER, "data": {"user_id": "u1", "plan": "pro"}}]
    assert envelope["source"]["input"] == "web"
    assert envelope["source"]["client_ip"] == "127.0.0.1"
    assert envelope["source"]["user_agent"] == "sd-test/1"
    assert envelope["id"] and envelope["collector_tstamp"]


async def test_batch_mixes_valid_and_invalid(tmp_path: Path) -> None:
    batch = [
        {"schema": PAGE_VIEW, "data": {"url": "https://example.com/1"}},
        {"schema": CLICK, "data": {"id": "buy", "position": 3}},
        {"schema": CLICK, "data": {"label": "no id"}},
        {"schema": PAGE_VIEW},  # no data
        {"data": {"url": "x"}},  # no schema
        "just a string",
        {"schema": "iglu:com.example/missing/jsonschema/1-0-0", "data": {}},
        {"schema": "not-an-iglu-uri", "data": {}},
    ]
    async with running(PIPELINE, tmp_path) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(pipeline)}/events", json=batch)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 8, "invalid": 6}
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [{"url": "https://example.com/1"}, {"id": "buy", "position": 3}]
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert len(invalid) == 6  # nothing vanishes
    keywords = [[e["keyword"] for e in envelope["errors"]] for envelope in invalid]
    assert keywords[0] == ["required"]
    assert keywords[1] == keywords[2] == keywords[3] == ["self_describing"]
    assert invalid[1]["payload"] == {"schema": PAGE_VIEW}  # the whole item is kept
    assert invalid[3]["payload"] == "just a string"
    assert keywords[4] == ["schema_not_found"]
    assert keywords[5] == ["schema_uri"]
    assert "not-an-iglu-uri" in invalid[5]["errors"][0]["message"]


async def test_contexts_are_validated(tmp_path: Path) -> None:
    def with_contexts(contexts: object) -> dict[str, object]:
        return {"schema": PAGE_VIEW, "data": {"url": "https://example.com/"}, "contexts": contexts}

    batch = [
        with_contexts([{"schema": USER, "data": {"user_id": "u1"}}, {"schema": USER, "data": {"plan": "gold"}}]),
        with_contexts([{"schema": "iglu:com.example/nope/jsonschema/1-0-0", "data": {}}]),
        with_contexts([{"data": {"user_id": "u1"}}]),
        with_contexts({"schema": USER, "data": {"user_id": "u1"}}),
    ]
    async with running(PIPELINE, tmp_path) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(pipeline)}/events", json=batch)
    assert response.json() == {"received": 4, "invalid": 4}
    assert read_jsonl(tmp_path / "valid.jsonl") == []
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    bad_data = {(e["path"], e["keyword"], e.get("schema")) for e in invalid[0]["errors"]}
    assert bad_data == {
        ("$.contexts[1].data", "required", USER),
        ("$.contexts[1].data.plan", "enum", USER),
    }
    assert len(invalid[0]["contexts"]) == 2  # contexts are kept, good and bad
    assert [(e["path"], e["keyword"]) for e in invalid[1]["errors"]] == [("$.contexts[0]", "schema_not_found")]
    assert [(e["path"], e["keyword"]) for e in invalid[2]["errors"]] == [("$.contexts[0]", "contexts")]
    assert [(e["path"], e["keyword"]) for e in invalid[3]["errors"]] == [("$.contexts", "contexts")]
    # The event itself was still checked, and was fine: only context errors.
    assert all(e["payload"] == {"url": "https://example.com/"} for e in invalid)


async def test_configurable_root_keys(tmp_path: Path) -> None:
    event = {
        "$schema": PAGE_VIEW,
        "payload": {"url": "https://example.com/custom"},
        "ctx": [{"schema": USER, "data": {"user_id": "u2"}}],
    }
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/custom"
        async with httpx.AsyncClient() as client:
            single = await client.post(url, json=event)
            batch = await client.post(url, json=[event, {"schema": PAGE_VIEW, "data": {"url": "x"}}])
    assert single.json() == {"received": 1, "invalid": 0}
    assert batch.json() == {"received": 2, "invalid": 1}
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [{"url": "https://example.com/custom"}] * 2
    assert valid[0]["contexts"] == [{"schema": USER, "data": {"user_id": "u2"}}]
    [invalid] = read_jsonl(tmp_path / "invalid.jsonl")
    assert "`$schema`" in invalid["errors"][0]["message"] and "`payload`" in invalid["errors"][0]["message"]


async def test_malformed_bodies_get_400(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/events"
        async with httpx.AsyncClient() as client:
            empty = await client.post(url, content=b"")
            broken = await client.post(url, content=b"{oops", headers={"content-type": "application/json"})
            no_events = await client.post(url, json=[])
            get = await client.get(url)
    assert (empty.status_code, empty.json()["error"]) == (400, "empty_body")
    assert (broken.status_code, broken.json()["error"]) == (400, "bad_json")
    assert (no_events.status_code, no_events.json()["error"]) == (400, "empty_batch")
    assert get.status_code == 405
    assert read_jsonl(tmp_path / "valid.jsonl") == read_jsonl(tmp_path / "invalid.jsonl") == []
