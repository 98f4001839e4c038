"""Connection settings shared by the PostgreSQL and AWS connectors: secrets masked, names quoted, TLS."""

from __future__ import annotations

import ssl

import pytest

from streamer.aws.settings import AwsConnection
from streamer.postgres.settings import (
    PostgresConnection,
    check_connection,
    describe,
    quote_identifier,
    quote_table,
    redact_dsn,
    ssl_argument,
)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://app:s3cret@db:5432/events", "postgresql://app:***@db:5432/events"),
        ("postgresql://app:s3cret@db/events?sslmode=require", "postgresql://app:***@db/events?sslmode=require"),
        ("postgresql://app@db/events?password=s3cret&sslmode=require",
         "postgresql://app@db/events?password=***&sslmode=require"),
        ("postgresql://app:p%40ss@h1:5432,h2:5433/events", "postgresql://app:***@h1:5432,h2:5433/events"),
        ("postgresql://db/events", "postgresql://db/events"),
    ],
)  # fmt: skip
def test_redact_dsn_masks_the_password(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_messages_and_reprs_never_show_secrets() -> None:
    dsn = "postgresql://app:s3cret@db/events"
    assert describe(OSError("could not connect to postgresql://app:s3cret@db/events"), dsn) == (
        "OSError: could not connect to postgresql://app:***@db/events"
    )
    connection = PostgresConnection(dsn=dsn)
    assert "s3cret" not in repr(connection) and "s3cret" not in connection.where
    aws = AwsConnection(region="eu-west-1", access_key_id="AKIDEXAMPLE", secret_access_key="wJalrXUtnFEMI",
                        session_token="FwoGZXIvYXdz")  # fmt: skip
    assert "wJalrXUtnFEMI" not in repr(aws) and "FwoGZXIvYXdz" not in repr(aws)


def test_identifiers_are_checked_and_quoted() -> None:
    assert quote_table("analytics.events") == '"analytics"."events"'
    assert quote_identifier("event_id") == '"event_id"'
    for hostile in ['x"; drop table y; --', "a b", "", "1abc", "a" * 64]:
        with pytest.raises(ValueError):
            quote_identifier(hostile)
        with pytest.raises(ValueError):
            quote_table(hostile)


def test_connection_checks() -> None:
    problems = dict(
        check_connection(PostgresConnection(dsn="mysql://x", pool_min_size=5, pool_max_size=2, ssl_cert="/c.pem"))
    )
    assert problems == {
        ("dsn",): "`dsn` must be a postgresql:// URI",
        ("pool_min_size",): "`pool_min_size` must not exceed `pool_max_size`",
        ("ssl_key",): "give both `ssl_cert` and `ssl_key`",
    }


def test_tls_argument() -> None:
    assert ssl_argument(PostgresConnection(dsn="postgresql://db/x")) is None  # the DSN or PGSSLMODE decide
    assert ssl_argument(PostgresConnection(dsn="postgresql://db/x", ssl_mode="require")) == "require"
    bundle = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    context = ssl_argument(PostgresConnection(dsn="postgresql://db/x", ssl_mode="verify-full", ssl_root_cert=bundle))
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    context = ssl_argument(PostgresConnection(dsn="postgresql://db/x", ssl_mode="verify-ca", ssl_root_cert=bundle))
    assert isinstance(context, ssl.SSLContext)
    assert not context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
