"""Schemas in an S3 bucket (or any S3-compatible store) in Iglu layout.

The object for ``iglu:com.acme/checkout/jsonschema/1-0-0`` is
``{prefix}com.acme/checkout/jsonschema/1-0-0{suffix}``. A missing key means
"not here"; any other failure (no such bucket, access denied, network, timeout)
makes the repository unavailable for that lookup. S3 answers 403 rather than 404
for a missing key when the credentials lack ``s3:ListBucket``: grant it so that
unknown schemas are reported as missing, not as a registry problem.

Credentials come from the usual AWS chain (environment, profile, instance role) unless the
repository names a ``profile`` or keys (see :mod:`streamer.aws.settings`).
Uses aiobotocore, so it runs on asyncio only.

Example::

    registry:
      repositories:
        - type: s3
          bucket: acme-iglu
          prefix: schemas/
          region: eu-west-1
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Annotated, Any

import anyio
import msgspec

from streamer.aws.settings import (
    AccessKeyId,
    AwsConnection,
    EndpointUrl,
    Profile,
    Region,
    SecretAccessKey,
    SessionToken,
    open_client,
)
from streamer.core.components import ASYNCIO_ONLY
from streamer.core.config import PathT
from streamer.core.registry import Repository, RepositorySpec, RepositoryUnavailable, SchemaKey

__all__ = ["S3Repository", "S3RepositorySpec"]

_MAX_SCHEMA_BYTES = 4 * 1_048_576
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3RepositorySpec(RepositorySpec, tag="s3", kw_only=True):
    """A bucket and key prefix holding schemas in Iglu layout."""

    bucket: Annotated[str, msgspec.Meta(min_length=1, description="Bucket name.", examples=["acme-iglu"])]
    prefix: Annotated[
        str,
        msgspec.Meta(
            description="Key prefix in front of vendor/name/format/M-R-A; a trailing '/' is added if missing.",
            examples=["schemas/", ""],
        ),
    ] = ""
    suffix: Annotated[
        str,
        msgspec.Meta(
            description="Appended to each key, for buckets that store `.json` objects.", examples=["", ".json"]
        ),
    ] = ""
    region: Region = None
    endpoint_url: EndpointUrl = None
    profile: Profile = None
    access_key_id: AccessKeyId = None
    secret_access_key: SecretAccessKey = None
    session_token: SessionToken = None
    timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds allowed to connect and to read each answer.", examples=[5])
    ] = 5.0
    retries: Annotated[
        int, msgspec.Meta(ge=0, description="Retries of a failed request (botocore standard mode).", examples=[2])
    ] = 2

    def connection(self) -> AwsConnection:
        return AwsConnection(
            region=self.region,
            endpoint_url=self.endpoint_url,
            profile=self.profile,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            session_token=self.session_token,
        )

    def check(self) -> Iterator[tuple[PathT, str]]:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            yield (
                ("access_key_id" if self.access_key_id is None else "secret_access_key",),
                ("give both `access_key_id` and `secret_access_key`, or neither (the AWS credential chain)"),
            )
        if self.prefix.startswith("/") or ".." in self.prefix.split("/"):
            yield ("prefix",), "`prefix` must be relative (no leading '/') and may not contain '..'"
        if self.suffix and not all(c.isalnum() or c in "._-" for c in self.suffix):
            yield ("suffix",), "`suffix` may hold only letters, digits, '.', '_' and '-'"


class S3Repository(Repository):
    Spec = S3RepositorySpec
    spec: S3RepositorySpec
    backends = ASYNCIO_ONLY
    requires = ("aiobotocore",)
    extra = "aws"
    backend_reason = "uses aiobotocore"

    def __init__(self, name: str, spec: S3RepositorySpec, context: Any) -> None:
        super().__init__(name, spec, context)
        prefix = spec.prefix
        self.prefix = prefix if not prefix or prefix.endswith("/") else f"{prefix}/"
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = anyio.Lock()

    def key_for(self, key: SchemaKey) -> str:
        # SchemaKey parts are restricted tokens, so the key cannot leave the prefix.
        return f"{self.prefix}{key.path}{self.spec.suffix}"

    async def open(self) -> None:
        await self._ensure_client()

    async def _ensure_client(self) -> Any:
        async with self._lock:
            if self._client is None:
                spec = self.spec
                stack = AsyncExitStack()
                try:
                    self._client = await open_client(
                        spec.connection(), "s3", stack, timeout=spec.timeout, retries=spec.retries
                    )
                except Exception as exc:
                    await stack.aclose()
                    raise RepositoryUnavailable(f"cannot create the S3 client: {exc}") from exc
                self._stack = stack
            return self._client

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def fetch(self, key: SchemaKey) -> bytes | None:
        # botocore ships no type information; importlib keeps mypy from needing stubs for it.
        exceptions: Any = importlib.import_module("botocore.exceptions")
        BotoCoreError, ClientError = exceptions.BotoCoreError, exceptions.ClientError

        client = await self._ensure_client()
        object_key = self.key_for(key)
        where = f"s3://{self.spec.bucket}/{object_key}"
        try:
            response = await client.get_object(Bucket=self.spec.bucket, Key=object_key)
            length = response.get("ContentLength") or 0
            async with response["Body"] as body:
                if length > _MAX_SCHEMA_BYTES:
                    raise RepositoryUnavailable(f"{where} is {length} bytes, more than {_MAX_SCHEMA_BYTES} allowed")
                data: bytes = await body.read()
                return data
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in _MISSING:
                return None
            if code in ("AccessDenied", "403"):
                raise RepositoryUnavailable(
                    f"access denied to {where} (S3 also says this for a missing key when "
                    "the credentials lack s3:ListBucket)"
                ) from exc
            raise RepositoryUnavailable(f"GET {where} failed: {code}: {error.get('Message', exc)}") from exc
        except (BotoCoreError, OSError, TimeoutError) as exc:
            raise RepositoryUnavailable(f"GET {where} failed: {type(exc).__name__}: {exc}") from exc
