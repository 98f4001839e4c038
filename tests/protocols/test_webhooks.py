"""Webhooks and pixels, named and arbitrary, over real HTTP with httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import httpx
import pytest

from streamer.core.config import ConfigError
from streamer.protocols.pixel import GIF
from tests.support import compile_text, http_port, read_jsonl, running

pytestmark = pytest.mark.anyio

CLICK = "iglu:com.example/button_click/jsonschema/1-0-0"
PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
SECRET = "s3cr3t-signing-key"
TOKEN = "t0ken-value-9f2"

PIPELINE = f"""
inputs:
  web:
    type: http
    port: 0
    routes:
      - type: webhook
        hooks:
          click: {{schema: "{CLICK}"}}
          signed:
            schema: "{CLICK}"
            auth:
              hmac: {{header: X-Hub-Signature-256, secret: "${{SECRET}}"}}
          shopify:
            schema: "{CLICK}"
            auth:
              hmac: {{header: X-Shopify-Hmac-Sha256, secret: "${{SECRET}}", prefix: "", encoding: base64}}
          token:
            schema: "{CLICK}"
            auth:
              secret_header: {{name: X-Token, value: "${{TOKEN}}"}}
      - type: pixel
        pixels:
          view: {{schema: "{PAGE_VIEW}"}}
      - type: webhook
        path: /hooks
        arbitrary: false
      - type: pixel
        path: /p
        arbitrary: false
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  valid: {{type: file, path: valid.jsonl, route: valid}}
  invalid: {{type: file, path: invalid.jsonl, route: invalid}}
"""
ENV = {"SECRET": SECRET, "TOKEN": TOKEN}


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def test_arbitrary_webhook_json_form_and_text(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path, ENV) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/webhook"
        async with httpx.AsyncClient() as client:
            responses = [
                await client.post(url, json={"order": 17, "items": [1, 2]}),
                await client.post(url, data={"a": "1", "b": ["x", "y"]}),
                await client.post(url, content=b"plain words", headers={"content-type": "text/plain"}),
                await client.post(url, content=b"<a>1</a>", headers={"content-type": "application/xml"}),
            ]
    assert [r.json() for r in responses] == [{"received": 1, "invalid": 0}] * 4
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [
        {"order": 17, "items": [1, 2]},
        {"a": "1", "b": ["x", "y"]},
        "plain words",
        "<a>1</a>",
    ]
    for envelope in valid:
        assert envelope["protocol"] == "webhook"
        assert envelope["schema"] == "iglu:io.streamer/webhook/jsonschema/1-0-0"
        assert envelope["source"]["client_ip"] == "127.0.0.1"
        assert "metadata" not in envelope["source"]


async def test_named_webhook_is_validated_against_its_schema(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path, ENV) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/webhook/click"
        async with httpx.AsyncClient() as client:
            good = await client.post(url, json={"id": "buy", "position": 2})
            form = await client.post(url, data={"id": "buy", "label": "Buy now"})
            bad = await client.post(url, json={"position": -1})
            text = await client.post(url, content=b"hello", headers={"content-type": "text/plain"})
    assert good.json() == {"received": 1, "invalid": 0}
    assert form.json() == {"received": 1, "invalid": 0}
    assert bad.json() == {"received": 1, "invalid": 1}
    assert text.json() == {"received": 1, "invalid": 1}
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [{"id": "buy", "position": 2}, {"id": "buy", "label": "Buy now"}]
    assert all(e["schema"] == CLICK and e["source"]["metadata"] == {"webhook": "click"} for e in valid)
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert {e["keyword"] for e in invalid[0]["errors"]} == {"required", "minimum"}
    assert invalid[1]["payload"] == "hello"
    assert invalid[1]["errors"][0]["keyword"] == "type"


async def test_bad_webhook_requests_get_clear_errors(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path, ENV) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient() as client:
            unknown = await client.post(f"{base}/webhook/nope", json={})
            octets = await client.post(
                f"{base}/webhook", content=b"\x00", headers={"content-type": "application/octet-stream"}
            )
            broken = await client.post(
                f"{base}/webhook", content=b"{nope", headers={"content-type": "application/json"}
            )
            empty = await client.post(f"{base}/webhook", content=b"", headers={"content-type": "text/plain"})
            latin = await client.post(f"{base}/webhook", content=b"\xff\xfe", headers={"content-type": "text/plain"})
            disabled = await client.post(f"{base}/hooks", json={})
            get = await client.get(f"{base}/webhook")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_webhook")
    assert "click" not in unknown.text  # configured names are not revealed
    assert (octets.status_code, octets.json()["error"]) == (415, "unsupported_media_type")
    assert (broken.status_code, broken.json()["error"]) == (400, "bad_json")
    assert (empty.status_code, empty.json()["error"]) == (400, "empty_body")
    assert (latin.status_code, latin.json()["error"]) == (400, "bad_encoding")
    assert disabled.status_code == 404 and "/hooks/<name>" in disabled.json()["message"]
    assert get.status_code == 405
    assert read_jsonl(tmp_path / "valid.jsonl") == []
    assert read_jsonl(tmp_path / "invalid.jsonl") == []


async def test_hmac_signature_good_and_bad(tmp_path: Path) -> None:
    body = json.dumps({"id": "signed-click"}).encode()
    shopify = "mJtE8vO2g7n7bJmUo1vXb0cw0rR6x3QmRjRj3s8vD0k="  # wrong on purpose
    shopify_good = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    async with running(PIPELINE, tmp_path, ENV) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}/webhook"
        json_type = {"content-type": "application/json"}
        async with httpx.AsyncClient() as client:
            good = await client.post(
                f"{base}/signed", content=body, headers={**json_type, "X-Hub-Signature-256": sign(body)}
            )
            tampered = await client.post(
                f"{base}/signed", content=body + b" ", headers={**json_type, "X-Hub-Signature-256": sign(body)}
            )
            wrong_key = await client.post(
                f"{base}/signed", content=body, headers={**json_type, "X-Hub-Signature-256": sign(body, "other")}
            )
            missing = await client.post(f"{base}/signed", content=body, headers=json_type)
            b64_good = await client.post(
                f"{base}/shopify", content=body, headers={**json_type, "X-Shopify-Hmac-Sha256": shopify_good}
            )
            b64_bad = await client.post(
                f"{base}/shopify", content=body, headers={**json_type, "X-Shopify-Hmac-Sha256": shopify}
            )
    assert good.status_code == 200, good.text
    assert b64_good.status_code == 200, b64_good.text
    for refused in (tampered, wrong_key, missing, b64_bad):
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"
        assert SECRET not in refused.text
    assert "missing" in missing.json()["message"]
    assert "does not match" in tampered.json()["message"]
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [{"id": "signed-click"}] * 2
    assert read_jsonl(tmp_path / "invalid.jsonl") == []
    # The signature header is not recorded either.
    assert all("x-hub-signature-256" not in e["source"]["headers"] for e in valid)


async def test_shared_secret_header(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path, ENV) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/webhook/token"
        async with httpx.AsyncClient() as client:
            good = await client.post(url, json={"id": "x"}, headers={"X-Token": TOKEN})
            bad = await client.post(url, json={"id": "x"}, headers={"X-Token": TOKEN + "x"})
            missing = await client.post(url, json={"id": "x"})
    assert good.status_code == 200, good.text
    assert (bad.status_code, missing.status_code) == (401, 401)
    assert TOKEN not in bad.text
    written = (tmp_path / "valid.jsonl").read_text()
    assert TOKEN not in written  # the secret never reaches a sink
    assert len(read_jsonl(tmp_path / "valid.jsonl")) == 1


async def test_pixels_named_and_arbitrary(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path, ENV) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient() as client:
            arbitrary = await client.get(f"{base}/pixel", params=[("e", "open"), ("tag", "a"), ("tag", "b"), ("z", "")])
            named = await client.get(f"{base}/pixel/view", params={"url": "https://example.com/", "title": "Home"})
            named_bad = await client.get(f"{base}/pixel/view", params={"title": "no url"})
            unknown = await client.get(f"{base}/pixel/nope")
            disabled = await client.get(f"{base}/p")
            post = await client.post(f"{base}/pixel", json={})
    for response in (arbitrary, named, named_bad):
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert "no-store" in response.headers["cache-control"]
        assert response.content == GIF
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_pixel")
    assert disabled.status_code == 404
    assert post.status_code == 405
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [
        {"e": "open", "tag": ["a", "b"], "z": ""},
        {"url": "https://example.com/", "title": "Home"},
    ]
    assert valid[0]["schema"] == "iglu:io.streamer/pixel/jsonschema/1-0-0"
    assert valid[0]["protocol"] == "pixel"
    assert valid[1]["schema"] == PAGE_VIEW
    assert valid[1]["source"]["metadata"] == {"pixel": "view"}
    [invalid] = read_jsonl(tmp_path / "invalid.jsonl")
    assert invalid["errors"][0]["keyword"] == "required"


async def test_arbitrary_routes_need_no_registry(tmp_path: Path) -> None:
    pipeline_text = """
inputs:
  web: {type: http, port: 0, routes: [{type: webhook}, {type: pixel}]}
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""
    async with running(pipeline_text, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient() as client:
            hook = await client.post(f"{base}/webhook", json=[1, "two"])
            pixel = await client.get(f"{base}/pixel?a=1")
    assert hook.json() == {"received": 1, "invalid": 0}
    assert pixel.status_code == 200
    assert [e["payload"] for e in read_jsonl(tmp_path / "valid.jsonl")] == [[1, "two"], {"a": "1"}]


@pytest.mark.parametrize(
    ("route", "words"),
    [
        ("{type: webhook, hooks: {x: {schema: 'iglu:a/b/jsonschema/1-0-0', auth: {}}}}", "exactly one of"),
        (
            "{type: webhook, hooks: {x: {schema: 'iglu:a/b/jsonschema/1-0-0', auth: {"
            "secret_header: {name: a, value: b}, hmac: {header: h, secret: s}}}}}",
            "exactly one of",
        ),
        ("{type: webhook, hooks: {'a/b': {schema: 'iglu:a/b/jsonschema/1-0-0'}}}", "regex"),
        ("{type: webhook, hooks: {x: {schema: 'https://example.com/s.json'}}}", "regex"),
        ("{type: webhook, hooks: {x: {schema: 'iglu:a/b/jsonschema/1-0-0', auth: {hmac: {header: h, secret: ''}}}}}",
         "length"),
        ("{type: webhook, hooks: {x: {schema: 'iglu:a/b/jsonschema/1-0-0', auth: {hmac: "
         "{header: h, secret: s, algorithm: md5}}}}}", "md5"),
        ("{type: pixel, pixels: {x: {schema: 'iglu:a/b/jsonschema/1-0-0', auth: {}}}}", "unknown key `auth`"),
    ],
)
def test_config_errors_point_at_the_route(route: str, words: str) -> None:
    text = f"inputs:\n  web:\n    type: http\n    routes:\n      - {route}\nsinks:\n  out: {{type: blackhole}}\n"
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    message = str(caught.value)
    assert "test.yml:5:" in message, message
    assert words in message, message
