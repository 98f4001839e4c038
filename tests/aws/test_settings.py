"""AWS settings shared by the AWS connectors: explicit credentials and profiles reach the client."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from streamer.aws.registry import S3Repository, S3RepositorySpec
from streamer.core.registry import SchemaKey
from tests.registry.conftest import moto_endpoint  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.anyio, pytest.mark.services]

KEY = SchemaKey.parse("iglu:com.acme/checkout/jsonschema/1-0-0")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials in the environment or the default files: only what the spec says can work."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "credentials"
    config.write_text("[ingest]\naws_access_key_id = from-profile\naws_secret_access_key = profile-secret\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(config))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return config


@pytest.mark.parametrize(
    "credentials",
    [
        {"access_key_id": "explicit", "secret_access_key": "explicit-secret", "session_token": "tok-123"},
        {"profile": "ingest"},
    ],
)
async def test_the_client_uses_the_spec_credentials(
    moto_endpoint: str,  # noqa: F811
    no_ambient_credentials: Path,
    credentials: dict[str, str],
) -> None:
    bucket = f"iglu-{uuid.uuid4().hex[:12]}"
    spec = S3RepositorySpec(bucket=bucket, endpoint_url=moto_endpoint, region="us-east-1", timeout=2, **credentials)
    repository = S3Repository("0", spec, None)
    await repository.open()
    try:
        client = repository._client
        await client.create_bucket(Bucket=bucket)
        await client.put_object(Bucket=bucket, Key=KEY.path, Body=json.dumps({"type": "object"}).encode())
        assert await repository.fetch(KEY) == b'{"type": "object"}'
        expected = credentials.get("access_key_id", "from-profile")
        assert client._get_credentials().access_key == expected  # what requests are signed with
    finally:
        await repository.aclose()
    assert "explicit-secret" not in repr(spec.connection()) and "tok-123" not in repr(spec.connection())


def test_half_a_key_pair_is_refused_at_check() -> None:
    spec = S3RepositorySpec(bucket="b", access_key_id="AKID")
    assert list(spec.check()) == [
        (
            ("secret_access_key",),
            "give both `access_key_id` and `secret_access_key`, or neither (the AWS credential chain)",
        )
    ]
