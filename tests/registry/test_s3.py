"""The s3 repository against moto's S3 server (asyncio only: aiobotocore)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from streamer.aws.registry import S3Repository, S3RepositorySpec
from streamer.core.registry import RepositoryUnavailable, SchemaKey, SchemaNotFound, SchemaResolver
from tests.registry.conftest import free_port, object_schema

pytestmark = [pytest.mark.anyio, pytest.mark.services]

URI = "iglu:com.acme/checkout/jsonschema/1-0-0"
KEY = SchemaKey.parse(URI)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def s3(moto_endpoint: str, aws_env: None) -> AsyncIterator[Any]:
    from aiobotocore.session import get_session

    async with get_session().create_client("s3", region_name="us-east-1", endpoint_url=moto_endpoint) as client:
        yield client


@pytest.fixture
async def bucket(s3: Any) -> str:
    name = f"iglu-{uuid.uuid4().hex[:12]}"
    await s3.create_bucket(Bucket=name)
    return name


async def put(s3: Any, bucket: str, key: str, document: Any) -> None:
    await s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())


def repo(endpoint: str, bucket: str, **fields: Any) -> S3Repository:
    spec = S3RepositorySpec(bucket=bucket, endpoint_url=endpoint, region="us-east-1", timeout=2, **fields)
    return S3Repository("0", spec, None)


async def test_fetches_under_the_prefix(moto_endpoint: str, s3: Any, bucket: str) -> None:
    await put(s3, bucket, f"schemas/{KEY.path}", object_schema(URI, a={"type": "string"}))
    await put(s3, bucket, KEY.path, object_schema(URI, outside={"type": "string"}))
    repository = repo(moto_endpoint, bucket, prefix="schemas")
    await repository.open()
    try:
        raw = await repository.fetch(KEY)
        assert raw is not None and json.loads(raw)["required"] == ["a"]
        assert await repository.fetch(SchemaKey.parse("iglu:com.acme/other/jsonschema/1-0-0")) is None
    finally:
        await repository.aclose()


async def test_suffix(moto_endpoint: str, s3: Any, bucket: str) -> None:
    await put(s3, bucket, f"{KEY.path}.json", object_schema(URI))
    repository = repo(moto_endpoint, bucket, suffix=".json")
    try:
        assert await repository.fetch(KEY) is not None
    finally:
        await repository.aclose()


async def test_a_change_is_seen_after_purge_not_before(moto_endpoint: str, s3: Any, bucket: str) -> None:
    await put(s3, bucket, KEY.path, object_schema(URI, a={"type": "string"}))
    resolver = SchemaResolver([repo(moto_endpoint, bucket)])
    await resolver.open()
    try:
        assert (await resolver.resolve(URI)).validator.is_valid({"a": "x"})
        await put(s3, bucket, KEY.path, object_schema(URI, b={"type": "string"}))
        assert (await resolver.resolve(URI)).validator.is_valid({"a": "x"})
        resolver.purge(URI)
        entry = await resolver.resolve(URI)
        assert entry.validator.is_valid({"b": "x"}) and not entry.validator.is_valid({"a": "x"})
        missing = await resolver.resolve("iglu:com.acme/missing/jsonschema/1-0-0")
        assert isinstance(missing.error, SchemaNotFound)
    finally:
        await resolver.aclose()


async def test_a_missing_bucket_is_unavailable(moto_endpoint: str, aws_env: None) -> None:
    repository = repo(moto_endpoint, f"nope-{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(RepositoryUnavailable, match="NoSuchBucket"):
            await repository.fetch(KEY)
    finally:
        await repository.aclose()


async def test_an_unreachable_endpoint_is_unavailable(aws_env: None) -> None:
    repository = repo(f"http://127.0.0.1:{free_port()}", "bucket", retries=0)
    try:
        with pytest.raises(RepositoryUnavailable) as caught:
            await repository.fetch(KEY)
        assert "GET s3://bucket/com.acme/checkout/jsonschema/1-0-0 failed" in str(caught.value)
    finally:
        await repository.aclose()
