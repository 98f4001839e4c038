"""How streamer reaches AWS (or an S3-compatible store): the settings every AWS connector takes, and the client.

Declared once, as annotated types (each with its description and examples) and the
:class:`AwsConnection` struct built from them. Connector specs declare the same keys with these types
(``region: Region``) and turn them into an :class:`AwsConnection` for :func:`open_client`, so the
S3 registry and the S3, Kinesis and Firehose sinks to come are configured and documented alike.
(msgspec cannot mix two structs with fields into one spec, hence types rather than a base struct.)

Credentials left unset come from the usual AWS chain: environment, shared config and profile, then
the instance or task role. Keys written in the pipeline file are masked in every representation.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Annotated, Any

import msgspec

__all__ = [
    "AccessKeyId",
    "AwsConnection",
    "EndpointUrl",
    "Profile",
    "Region",
    "SecretAccessKey",
    "SessionToken",
    "open_client",
]

Region = Annotated[
    str | None, msgspec.Meta(description="AWS region; default from the environment.", examples=["eu-west-1"])
]
EndpointUrl = Annotated[
    str | None,
    msgspec.Meta(
        description="Endpoint of an S3-compatible store or a local emulator (MinIO, moto, LocalStack); default: AWS.",
        examples=["http://127.0.0.1:9000"],
    ),
]
Profile = Annotated[
    str | None,
    msgspec.Meta(
        description="Named profile of the shared AWS config files; default: the environment's.", examples=["ingest"]
    ),
]
AccessKeyId = Annotated[
    str | None,
    msgspec.Meta(
        description="Access key id; default: the AWS credential chain. Write it as a variable (`${...}`).",
        examples=["${AWS_ACCESS_KEY_ID}"],
    ),
]
SecretAccessKey = Annotated[
    str | None,
    msgspec.Meta(
        description="Secret of `access_key_id`; masked in messages. Write it as a variable (`${...}`).",
        examples=["${AWS_SECRET_ACCESS_KEY}"],
    ),
]
SessionToken = Annotated[
    str | None,
    msgspec.Meta(
        description="Session token of temporary credentials; masked in messages.", examples=["${AWS_SESSION_TOKEN}"]
    ),
]

_MASK = "***"


class AwsConnection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where and as whom to call AWS."""

    region: Region = None
    endpoint_url: EndpointUrl = None
    profile: Profile = None
    access_key_id: AccessKeyId = None
    secret_access_key: SecretAccessKey = None
    session_token: SessionToken = None

    def __repr__(self) -> str:
        # Secrets never reach a log line or a traceback through a repr.
        return (
            f"AwsConnection(region={self.region!r}, endpoint_url={self.endpoint_url!r}, profile={self.profile!r}, "
            f"access_key_id={self.access_key_id!r}, "
            f"secret_access_key={_MASK if self.secret_access_key else None!r}, "
            f"session_token={_MASK if self.session_token else None!r})"
        )


async def open_client(
    connection: AwsConnection, service: str, stack: AsyncExitStack, *, timeout: float, retries: int
) -> Any:
    """An aiobotocore client for ``service``, closed with ``stack``.

    ``timeout`` bounds connecting and each read; ``retries`` is botocore's standard retry mode (attempts
    after the first).
    """
    from aiobotocore.config import AioConfig
    from aiobotocore.session import AioSession, get_session

    config = AioConfig(
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"max_attempts": retries + 1, "mode": "standard"},
    )
    session = AioSession(profile=connection.profile) if connection.profile else get_session()
    return await stack.enter_async_context(
        session.create_client(
            service,
            region_name=connection.region,
            endpoint_url=connection.endpoint_url,
            aws_access_key_id=connection.access_key_id,
            aws_secret_access_key=connection.secret_access_key,
            aws_session_token=connection.session_token,
            config=config,
        )
    )
