"""Through a running pipeline: the schemas route (purge, serve) and registry errors in invalid envelopes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from streamer.core.config import ConfigError
from tests.registry.conftest import SchemaServer, free_port, object_schema, write_schema
from tests.support import compile_text, http_port, read_jsonl, running

pytestmark = pytest.mark.anyio

URI = "iglu:com.acme/checkout/jsonschema/1-0-0"

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    routes:
      - type: self_describing
      - type: schemas
        purge_token: ${PURGE_TOKEN:-}
        serve: ${SERVE:-true}
registry:
  repositories: [{type: file, path: schemas}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""

TOKEN = {"PURGE_TOKEN": "t0ken-with-enough-entropy"}
AUTH = {"authorization": "Bearer t0ken-with-enough-entropy"}


def write_checkout(tmp_path: Path, field: str) -> None:
    write_schema(tmp_path / "schemas", URI, object_schema(URI, **{field: {"type": "string"}}))


async def post_event(client: httpx.AsyncClient, base: str, data: dict[str, Any], schema: str = URI) -> None:
    response = await client.post(f"{base}/events", json={"schema": schema, "data": data})
    assert response.status_code == 200, response.text


async def test_a_changed_schema_is_used_after_purge_not_before(tmp_path: Path) -> None:
    write_checkout(tmp_path, "a")
    async with running(PIPELINE, tmp_path, TOKEN) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient() as client:
            await post_event(client, base, {"a": "1"})  # valid, and now cached
            write_checkout(tmp_path, "b")
            await post_event(client, base, {"a": "2"})  # still valid: the cache holds the old version
            response = await client.post(f"{base}/c/purge", params={"schema": URI}, headers=AUTH)
            assert response.json() == {"purged": 1, "schema": URI}
            await post_event(client, base, {"a": "3"})  # invalid now
            await post_event(client, base, {"b": "4"})
            write_checkout(tmp_path, "c")
            response = await client.post(f"{base}/c/purge", headers=AUTH)
            assert response.status_code == 200 and response.json() == {"purged": 1}
            await post_event(client, base, {"c": "5"})
    valid = [e["payload"] for e in read_jsonl(tmp_path / "valid.jsonl")]
    invalid = [e["payload"] for e in read_jsonl(tmp_path / "invalid.jsonl")]
    assert valid == [{"a": "1"}, {"a": "2"}, {"b": "4"}, {"c": "5"}]
    assert invalid == [{"a": "3"}]


async def test_purge_needs_the_bearer_token(tmp_path: Path) -> None:
    write_checkout(tmp_path, "a")
    async with running(PIPELINE, tmp_path, TOKEN) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}/c/purge"
        async with httpx.AsyncClient() as client:
            for headers in (
                {},
                {"authorization": "Bearer wrong"},
                {"authorization": "Bearer t0ken-with-enough-entropy-and-more"},
                {"authorization": "Basic t0ken-with-enough-entropy"},
                {"authorization": "t0ken-with-enough-entropy"},
            ):
                response = await client.post(url, headers=headers)
                assert response.status_code == 401, headers
                assert response.json()["error"] == "unauthorized"
                assert "Authorization: Bearer" in response.json()["message"]
                assert response.headers["www-authenticate"].startswith("Bearer")
            response = await client.post(url, params={"schema": "iglu:../../etc/passwd"}, headers=AUTH)
            assert response.status_code == 400
            assert response.json()["error"] == "schema_uri"
            response = await client.get(url, headers=AUTH)
            assert response.status_code == 405


@pytest.mark.parametrize("environ", [{}, {"PURGE_TOKEN": ""}], ids=["unset", "empty"])
async def test_purge_is_disabled_without_a_token(tmp_path: Path, environ: dict[str, str]) -> None:
    async with running(PIPELINE, tmp_path, environ) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(pipeline)}/c/purge", headers=AUTH)
    assert response.status_code == 403
    assert response.json()["error"] == "purge_disabled"
    assert "set `purge_token`" in response.json()["message"]


async def test_serves_schemas(tmp_path: Path) -> None:
    write_checkout(tmp_path, "a")
    write_schema(tmp_path / "schemas", "iglu:com.acme/broken/jsonschema/1-0-0", "{nope")
    async with running(PIPELINE, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}/s"
        async with httpx.AsyncClient() as client:
            ok = await client.get(f"{base}/{URI}")
            encoded = await client.get(f"{base}/iglu%3Acom.acme/checkout/jsonschema/1-0-0")
            bare = await client.get(f"{base}/com.acme/checkout/jsonschema/1-0-0")
            missing = await client.get(f"{base}/iglu:com.acme/missing/jsonschema/1-0-0")
            broken = await client.get(f"{base}/iglu:com.acme/broken/jsonschema/1-0-0")
            escape = await client.get(f"{base}/iglu:com.acme/..%2F..%2Fsecret/jsonschema/1-0-0")
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    assert ok.json() == object_schema(URI, a={"type": "string"})
    assert encoded.json() == ok.json() and bare.json() == ok.json()
    assert missing.status_code == 404 and missing.json()["error"] == "schema_not_found"
    assert broken.status_code == 500 and "is not JSON" in broken.json()["message"]
    assert escape.status_code == 400 and escape.json()["error"] == "schema_uri"


async def test_serving_can_be_switched_off(tmp_path: Path) -> None:
    write_checkout(tmp_path, "a")
    async with running(PIPELINE, tmp_path, {"SERVE": "false"}) as pipeline:
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{http_port(pipeline)}/s/{URI}")
    assert response.status_code == 404


REGISTRIES = """
inputs:
  web: {type: http, port: 0}
registry:
  cache: {negative_ttl: 60}
  repositories:
    - {type: http, name: down, url: "http://127.0.0.1:${DEAD_PORT}", retries: 0, vendor_prefixes: [com.down]}
    - {type: http, name: static, url: "${STATIC_URL}", priority: 1}
    - {type: file, name: local, path: schemas, priority: 2}
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


async def test_registry_errors_land_in_the_invalid_envelope(tmp_path: Path, schema_server: SchemaServer) -> None:
    write_checkout(tmp_path, "a")
    write_schema(tmp_path / "schemas", "iglu:com.acme/broken/jsonschema/1-0-0", object_schema(
        "iglu:com.acme/broken/jsonschema/1-0-0", a={"$ref": "https://evil.example/x.json"}))
    environ = {"DEAD_PORT": str(free_port()), "STATIC_URL": schema_server.url}
    async with running(REGISTRIES, tmp_path, environ) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient() as client:
            await post_event(client, base, {"a": "x"})
            await post_event(client, base, {"n": 1}, "iglu:com.down/thing/jsonschema/1-0-0")
            await post_event(client, base, {"n": 2}, "iglu:com.acme/nowhere/jsonschema/1-0-0")
            await post_event(client, base, {"n": 3}, "iglu:com.acme/broken/jsonschema/1-0-0")
            await post_event(client, base, {"n": 4}, "iglu:com.acme/../../x/jsonschema/1-0-0")
    assert [e["payload"] for e in read_jsonl(tmp_path / "valid.jsonl")] == [{"a": "x"}]
    errors = {e["payload"]["n"]: e["errors"][0] for e in read_jsonl(tmp_path / "invalid.jsonl")}
    assert errors[1]["keyword"] == "registry_unavailable"
    assert "down: GET http://127.0.0.1:" in errors[1]["message"]
    # Missing from the registries that answered, but one could not be asked: that is not "not found".
    assert errors[2]["keyword"] == "registry_unavailable"
    assert "was not found and some registries could not be asked: down: GET" in errors[2]["message"]
    assert errors[3]["keyword"] == "schema_invalid"
    assert "$ref https://evil.example/x.json is remote" in errors[3]["message"]
    assert errors[4]["keyword"] == "schema_uri"


def test_repository_settings_are_checked_at_load_time() -> None:
    text = """
inputs: {web: {type: http}}
registry:
  repositories:
    - {type: http, url: "ftp://x", api: iglu_server}
    - {type: postgres, dsn: "postgresql://x/y", table: "t; drop table u"}
sinks: {out: {type: blackhole}}
"""
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    message = str(caught.value)
    assert "`url` must start with http:// or https://" in message
    assert "an Iglu Server needs `api_key`" in message
    assert "is not a table name" in message
