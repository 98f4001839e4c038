"""CloudEvents 1.0 HTTP binding, driven by the CloudEvents Python SDK and httpx."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import http_port, read_jsonl, running

try:  # cloudevents >= 2 keeps the 1.x API under cloudevents.v1
    from cloudevents.v1.conversion import to_binary, to_dict, to_structured
    from cloudevents.v1.http import CloudEvent
except ImportError:  # pragma: no cover - cloudevents 1.x
    from cloudevents.conversion import to_binary, to_dict, to_structured  # type: ignore[no-redef]
    from cloudevents.http import CloudEvent  # type: ignore[no-redef]

pytestmark = pytest.mark.anyio

PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
BATCH = "application/cloudevents-batch+json"

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    routes:
      - {type: cloudevents, path: /ce}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""

NO_REGISTRY = """
inputs:
  web:
    type: http
    port: 0
    routes:
      - {type: cloudevents, path: /ce}
      - {type: cloudevents, path: /strict, default_schema: null}
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


def page_view(data: Any, **attributes: Any) -> CloudEvent:
    return CloudEvent(
        {"type": "com.example.page_view", "source": "/web/shop", "dataschema": PAGE_VIEW, **attributes}, data
    )


async def test_structured_mode_keeps_every_attribute(tmp_path: Path) -> None:
    event = page_view(
        {"url": "https://example.com/"},
        subject="home",
        time="2024-05-01T12:00:00Z",
        tenant="acme",
    )
    headers, body = to_structured(event)
    async with running(PIPELINE, tmp_path) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(pipeline)}/ce", headers=headers, content=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 1, "invalid": 0}
    [envelope] = read_jsonl(tmp_path / "valid.jsonl")
    assert envelope["protocol"] == "cloudevents"
    assert envelope["schema"] == PAGE_VIEW
    assert envelope["schema_name"] == "page_view"
    assert envelope["payload"] == {"url": "https://example.com/"}
    assert datetime.fromisoformat(envelope["event_tstamp"]) == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert envelope["id"] != event["id"]  # the envelope id is streamer's own; the CloudEvent id is kept below
    attributes = envelope["source"]["metadata"]["cloudevents"]
    assert attributes == {
        "id": event["id"],
        "source": "/web/shop",
        "type": "com.example.page_view",
        "specversion": "1.0",
        "subject": "home",
        "time": "2024-05-01T12:00:00Z",
        "dataschema": PAGE_VIEW,
        "tenant": "acme",
    }
    assert envelope["source"]["client_ip"] == "127.0.0.1"
    assert not (tmp_path / "invalid.jsonl").exists() or read_jsonl(tmp_path / "invalid.jsonl") == []


async def test_batched_mode_validates_each_event(tmp_path: Path) -> None:
    good = page_view({"url": "https://example.com/a"})
    bad = page_view({"title": 7})
    body = json.dumps([to_dict(good), to_dict(bad)])
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/ce"
        async with httpx.AsyncClient() as client:
            response = await client.post(url, headers={"content-type": BATCH}, content=body)
            empty = await client.post(url, headers={"content-type": BATCH}, content=b"[]")
    assert response.status_code == 200, response.text
    assert response.json() == {"received": 2, "invalid": 1}
    assert empty.status_code == 200 and empty.json() == {"received": 0, "invalid": 0}
    [valid] = read_jsonl(tmp_path / "valid.jsonl")
    [invalid] = read_jsonl(tmp_path / "invalid.jsonl")
    assert valid["source"]["metadata"]["cloudevents"]["id"] == good["id"]
    assert invalid["source"]["metadata"]["cloudevents"]["id"] == bad["id"]
    assert invalid["valid"] is False
    assert {e["keyword"] for e in invalid["errors"]} == {"type", "required"}
    assert all(e["schema"] == PAGE_VIEW for e in invalid["errors"])


async def test_binary_mode_json_text_and_bytes(tmp_path: Path) -> None:
    json_event = page_view({"url": "https://example.com/b"}, time="2024-05-01T12:00:00+02:00", traceparent="00-ab")
    # Bytes: the v1 SDK JSON-encodes str data whatever its datacontenttype, and text/plain is raw text.
    text_event = CloudEvent({"type": "t.text", "source": "/s", "datacontenttype": "text/plain"}, b"hello, world")
    bytes_event = CloudEvent({"type": "t.bin", "source": "/s", "datacontenttype": "application/octet-stream"},
                             b"\x00\x01\xff")
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/ce"
        async with httpx.AsyncClient() as client:
            responses = []
            for event in (json_event, text_event, bytes_event):
                headers, body = to_binary(event)
                responses.append(await client.post(url, headers=headers, content=body))
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    by_type = {e["source"]["metadata"]["cloudevents"]["type"]: e for e in read_jsonl(tmp_path / "valid.jsonl")}
    page = by_type["com.example.page_view"]
    assert page["payload"] == {"url": "https://example.com/b"}
    assert page["schema"] == PAGE_VIEW
    assert page["source"]["metadata"]["cloudevents"]["traceparent"] == "00-ab"
    assert page["source"]["metadata"]["cloudevents"]["id"] == json_event["id"]
    assert datetime.fromisoformat(page["event_tstamp"]) == datetime(2024, 5, 1, 10, tzinfo=UTC)
    # No Iglu dataschema: the permissive built-in schema applies.
    text = by_type["t.text"]
    assert text["payload"] == "hello, world"
    assert text["schema"] == "iglu:io.streamer/cloudevent/jsonschema/1-0-0"
    assert text["source"]["metadata"]["cloudevents"]["datacontenttype"] == "text/plain"
    binary = by_type["t.bin"]
    assert binary["payload"] == "AAH/"
    assert binary["source"]["metadata"]["data_encoding"] == "base64"


async def test_structured_data_base64(tmp_path: Path) -> None:
    event = CloudEvent({"type": "t.bin", "source": "/s", "datacontenttype": "application/octet-stream"}, b"\x01\x02")
    headers, body = to_structured(event)
    assert b"data_base64" in body
    async with running(PIPELINE, tmp_path) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(pipeline)}/ce", headers=headers, content=body)
    assert response.status_code == 200, response.text
    [envelope] = read_jsonl(tmp_path / "valid.jsonl")
    assert envelope["payload"] == "AQI="
    assert envelope["source"]["metadata"]["data_encoding"] == "base64"
    assert "data_base64" not in envelope["source"]["metadata"]["cloudevents"]


async def test_missing_source_is_400_naming_it(tmp_path: Path) -> None:
    event = page_view({"url": "https://example.com/"})
    headers, body = to_structured(event)
    document = json.loads(body)
    del document["source"]
    binary_headers, binary_body = to_binary(event)
    del binary_headers["ce-source"]
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/ce"
        async with httpx.AsyncClient() as client:
            structured = await client.post(url, headers=headers, content=json.dumps(document))
            binary = await client.post(url, headers=binary_headers, content=binary_body)
            batch = await client.post(
                url, headers={"content-type": BATCH}, content=json.dumps([to_dict(event), document])
            )
    for response in (structured, binary, batch):
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["error"] == "missing_attributes"
        assert problem["missing"] == ["source"]
        assert "source" in problem["message"]
    assert "event [1]" in batch.json()["message"]
    # A rejected request writes nothing, not even the batch's good event.
    assert read_jsonl(tmp_path / "valid.jsonl") == []
    assert read_jsonl(tmp_path / "invalid.jsonl") == []


MALFORMED: list[tuple[dict[str, str], bytes, int, str, str]] = [
    ({"content-type": "application/cloudevents+json"}, b"{not json", 400, "bad_json", "not valid JSON"),
    ({"content-type": "application/cloudevents+json"}, b"", 400, "empty_body", "no body"),
    ({"content-type": "application/cloudevents+json"}, b"[1]", 400, "bad_event", "JSON object"),
    ({"content-type": BATCH}, b"{}", 400, "bad_batch", "JSON array"),
    ({"content-type": "application/cloudevents+avro"}, b"x", 415, "unsupported_format", "not supported"),
    ({"content-type": "text/plain"}, b"hi", 400, "missing_attributes", "ce-specversion"),
    (
        {"content-type": "application/cloudevents+json"},
        b'{"id": "1", "source": "/s", "type": "t", "specversion": "0.3"}',
        400, "unsupported_specversion", "only 1.0",
    ),
    (
        {"content-type": "application/cloudevents+json"},
        b'{"id": "1", "source": "/s", "type": "t", "specversion": "1.0", "time": "yesterday"}',
        400, "bad_attribute", "RFC 3339",
    ),
    (
        {"content-type": "application/cloudevents+json"},
        b'{"id": "1", "source": "/s", "type": "t", "specversion": "1.0", "subject": 5}',
        400, "bad_attribute", "`subject`",
    ),
    (
        {"content-type": "application/cloudevents+json"},
        b'{"id": "", "source": "/s", "type": "t", "specversion": "1.0"}',
        400, "missing_attributes", "id",
    ),
    (
        {"ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0",
         "content-type": "application/json"},
        b"{oops", 400, "bad_json", "not valid JSON",
    ),
]


async def test_malformed_requests_get_clear_errors(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/ce"
        async with httpx.AsyncClient() as client:
            for headers, body, status, error, words in MALFORMED:
                response = await client.post(url, headers=headers, content=body)
                assert response.status_code == status, (body, response.text)
                assert response.json()["error"] == error, (body, response.text)
                assert words in response.json()["message"], (body, response.text)
    assert read_jsonl(tmp_path / "valid.jsonl") == []
    assert read_jsonl(tmp_path / "invalid.jsonl") == []


async def test_schema_without_a_registry_and_default_schema_null(tmp_path: Path) -> None:
    plain = CloudEvent({"type": "t.plain", "source": "/s"}, {"anything": [1, 2]})
    external = CloudEvent({"type": "t.ext", "source": "/s", "dataschema": "https://example.com/s.json"}, {"a": 1})
    async with running(NO_REGISTRY, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient() as client:
            headers, body = to_structured(plain)
            permissive = await client.post(f"{base}/ce", headers=headers, content=body)
            strict = [
                await client.post(f"{base}/strict", headers=h, content=b)
                for h, b in (to_structured(plain), to_binary(external))
            ]
    assert permissive.json() == {"received": 1, "invalid": 0}
    assert [r.json() for r in strict] == [{"received": 1, "invalid": 1}] * 2
    [valid] = read_jsonl(tmp_path / "valid.jsonl")
    assert valid["schema"] == "iglu:io.streamer/cloudevent/jsonschema/1-0-0"
    assert valid["payload"] == {"anything": [1, 2]}
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["errors"][0]["keyword"] for e in invalid] == ["schema", "schema"]
    assert "dataschema is none" in invalid[0]["errors"][0]["message"]
    assert "'https://example.com/s.json'" in invalid[1]["errors"][0]["message"]


async def test_plain_json_without_ce_headers_is_read_as_structured(tmp_path: Path) -> None:
    event = page_view({"url": "https://example.com/"})
    async with running(PIPELINE, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/ce"
        async with httpx.AsyncClient() as client:
            one = await client.post(url, json=to_dict(event))
            many = await client.post(url, json=[to_dict(event), to_dict(event)])
    assert one.json() == {"received": 1, "invalid": 0}
    assert many.json() == {"received": 2, "invalid": 0}


async def test_percent_encoded_binary_headers(tmp_path: Path) -> None:
    headers = {
        "ce-id": "1", "ce-source": "/s", "ce-type": "t", "ce-specversion": "1.0",
        "ce-subject": "caf%C3%A9 %25 done", "content-type": "application/json",
    }
    async with running(PIPELINE, tmp_path) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(pipeline)}/ce", headers=headers, content=b"{}")
    assert response.status_code == 200, response.text
    [envelope] = read_jsonl(tmp_path / "valid.jsonl")
    assert envelope["source"]["metadata"]["cloudevents"]["subject"] == "café % done"
    assert envelope["payload"] == {}
