"""The http repository against a real local HTTP server: static layout, Iglu Server API, timeouts, retries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from streamer.core.registry import RepositoryUnavailable, SchemaKey, SchemaNotFound, SchemaResolver
from streamer.registry.http import HttpRepository, HttpRepositorySpec
from tests.registry.conftest import SchemaServer, free_port, object_schema, write_schema

pytestmark = pytest.mark.anyio

URI = "iglu:com.acme/checkout/jsonschema/1-0-0"
KEY = SchemaKey.parse(URI)


@asynccontextmanager
async def repository(**fields: Any) -> AsyncIterator[HttpRepository]:
    repo = HttpRepository("0", HttpRepositorySpec(**fields), None)
    await repo.open()
    try:
        yield repo
    finally:
        await repo.aclose()


async def test_static_repository_serves_iglu_layout(schema_server: SchemaServer) -> None:
    write_schema(schema_server.root, URI, object_schema(URI))
    async with repository(url=schema_server.url + "/", headers={"X-Tenant": "acme"}) as repo:
        raw = await repo.fetch(KEY)
        assert raw is not None and b'"checkout"' in raw
        assert await repo.fetch(SchemaKey.parse("iglu:com.acme/other/jsonschema/1-0-0")) is None
    path, headers = schema_server.requests[0]
    assert path == "/schemas/com.acme/checkout/jsonschema/1-0-0"
    assert headers["x-tenant"] == "acme"
    assert "apikey" not in headers


async def test_suffix_for_json_files(schema_server: SchemaServer) -> None:
    write_schema(schema_server.root, URI, object_schema(URI), suffix=".json")
    async with repository(url=schema_server.url, suffix=".json") as repo:
        assert await repo.fetch(KEY) is not None
    assert schema_server.requests[0][0] == "/schemas/com.acme/checkout/jsonschema/1-0-0.json"


async def test_iglu_server_api_sends_the_api_key(schema_server: SchemaServer) -> None:
    write_schema(schema_server.root, URI, object_schema(URI))
    schema_server.api_key = "s3cret"
    async with repository(url=schema_server.url, api="iglu_server", api_key="s3cret") as repo:
        assert await repo.fetch(KEY) is not None
    path, headers = schema_server.requests[0]
    assert path == "/api/schemas/com.acme/checkout/jsonschema/1-0-0"
    assert headers["apikey"] == "s3cret"


async def test_a_refused_key_is_unavailable_at_once(schema_server: SchemaServer) -> None:
    schema_server.api_key = "s3cret"
    async with repository(url=schema_server.url, api="iglu_server", api_key="wrong", retries=3) as repo:
        with pytest.raises(RepositoryUnavailable, match=r"was refused \(401\); check api_key"):
            await repo.fetch(KEY)
    assert len(schema_server.requests) == 1  # not retried
    assert "wrong" not in str(schema_server.requests[0][0])


async def test_server_errors_are_retried(schema_server: SchemaServer) -> None:
    write_schema(schema_server.root, URI, object_schema(URI))
    schema_server.fail_next = 2
    async with repository(url=schema_server.url, retries=2, retry_backoff=0.01) as repo:
        assert await repo.fetch(KEY) is not None
    assert len(schema_server.requests) == 3


async def test_retries_run_out(schema_server: SchemaServer) -> None:
    schema_server.fail_next = 10
    async with repository(url=schema_server.url, retries=1, retry_backoff=0.01) as repo:
        with pytest.raises(RepositoryUnavailable, match=r"answered 503 \(2 attempts\)"):
            await repo.fetch(KEY)


async def test_a_slow_server_times_out(schema_server: SchemaServer) -> None:
    schema_server.delay = 0.5
    async with repository(url=schema_server.url, timeout=0.1, retries=0) as repo:
        with pytest.raises(RepositoryUnavailable, match=r"timed out after 0.1s \(1 attempt\)"):
            await repo.fetch(KEY)


async def test_a_server_that_is_down_is_unavailable_not_missing(schema_server: SchemaServer) -> None:
    write_schema(schema_server.root, URI, object_schema(URI))
    dead = HttpRepository("0", HttpRepositorySpec(url=f"http://127.0.0.1:{free_port()}", name="dead", retries=0), None)
    up = HttpRepository("1", HttpRepositorySpec(url=schema_server.url, name="up", priority=1), None)
    resolver = SchemaResolver([dead, up])
    await resolver.open()
    try:
        assert (await resolver.resolve(URI)).repository == "up"
        entry = await resolver.resolve("iglu:com.acme/unknown/jsonschema/1-0-0")
        assert isinstance(entry.error, RepositoryUnavailable)
        assert "dead: GET http://127.0.0.1:" in str(entry.error)
        assert "ConnectError" in str(entry.error)
        resolver.use([up])
        entry = await resolver.resolve("iglu:com.acme/unknown2/jsonschema/1-0-0")
        assert isinstance(entry.error, SchemaNotFound)
    finally:
        await resolver.aclose()


async def test_credentials_in_the_url_stay_out_of_errors() -> None:
    url = f"http://reader:pa55word@127.0.0.1:{free_port()}/iglu"
    async with repository(url=url, retries=0) as repo:
        with pytest.raises(RepositoryUnavailable) as caught:
            await repo.fetch(KEY)
    assert "pa55word" not in str(caught.value) and "reader" not in str(caught.value)
    assert "GET http://127.0.0.1:" in str(caught.value) and "/iglu/schemas/com.acme/checkout" in str(caught.value)
