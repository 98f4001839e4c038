"""Strict Iglu URIs: nothing that parses can leave a directory, a key prefix or a URL path."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from streamer.aws.registry import S3Repository, S3RepositorySpec
from streamer.core.registry import InvalidSchemaURI, SchemaKey, SchemaResolver
from streamer.postgres.settings import quote_table
from streamer.registry.file import FileRepository, FileRepositorySpec
from streamer.registry.http import HttpRepository, HttpRepositorySpec
from tests.registry.conftest import object_schema, write_schema

GOOD = "iglu:com.acme/checkout_done/jsonschema/1-0-12"

ESCAPES = [
    "iglu:../etc/passwd/jsonschema/1-0-0",
    "iglu:com.acme/../../jsonschema/1-0-0",
    "iglu:com.acme/..%2f..%2fsecret/jsonschema/1-0-0",
    "iglu:com.acme/%2e%2e/jsonschema/1-0-0",
    "iglu:/etc/passwd/jsonschema/1-0-0",
    "iglu:com.acme//checkout/jsonschema/1-0-0",
    "iglu:com.acme/check/out/jsonschema/1-0-0",
    "iglu:com.acme/check\\..\\out/jsonschema/1-0-0",
    "iglu:com.acme/a..b/jsonschema/1-0-0",
    "iglu:.hidden/checkout/jsonschema/1-0-0",
    "iglu:com.acme/checkout/jsonschema/1-0-0/../../x",
    "iglu:com.acme/checkout/jsonschema/1-0-0\n",
    "iglu:com.acme/checkout/jsonschema/1-0-0\x00",
    "iglu:com.acme/checkout?x=1/jsonschema/1-0-0",
    "iglu:com.acme/checkout#x/jsonschema/1-0-0",
    "iglu:com.acme/chéckout/jsonschema/1-0-0",
    "iglu:com.acme/checkout/jsonschema/1-0-0.json",
    "iglu:com.acme/checkout/jsonschema/01-0-0",
    "iglu:com.acme/checkout/jsonschema/1-0",
    "iglu:com.acme/checkout/jsonschema/a-b-c",
    "com.acme/checkout/jsonschema/1-0-0",
    "http://evil.example/schemas/x",
    "iglu:com.acme/checkout/jsonschema/1-0-0 ",
    "",
]


def test_parses_a_strict_uri() -> None:
    key = SchemaKey.parse(GOOD)
    assert (key.vendor, key.name, key.format, key.version) == ("com.acme", "checkout_done", "jsonschema", "1-0-12")
    assert key.uri == GOOD
    assert key.path == "com.acme/checkout_done/jsonschema/1-0-12"


@pytest.mark.parametrize("uri", ESCAPES)
def test_refuses_anything_else(uri: str) -> None:
    with pytest.raises(InvalidSchemaURI, match="expected iglu:vendor/name/format/M-R-A"):
        SchemaKey.parse(uri)


def test_a_very_long_uri_is_refused_with_a_short_message() -> None:
    with pytest.raises(InvalidSchemaURI) as caught:
        SchemaKey.parse("iglu:" + "a" * 100_000 + "/b/jsonschema/1-0-0")
    assert len(str(caught.value)) < 400


@pytest.mark.anyio
async def test_resolving_an_escape_attempt_touches_no_repository(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    write_schema(secret, "iglu:x/y/jsonschema/1-0-0", object_schema("iglu:x/y/jsonschema/1-0-0"))
    root = tmp_path / "schemas"
    root.mkdir()
    repository = FileRepository("0", FileRepositorySpec(path=str(root)), SimpleNamespace(base_dir=tmp_path))
    resolver = SchemaResolver([repository])
    entry = await resolver.resolve("iglu:../secret/x/y/1-0-0")
    assert isinstance(entry.error, InvalidSchemaURI)
    assert resolver.fetches == 0


@pytest.mark.anyio
async def test_file_repository_ignores_a_symlink_leaving_its_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    uri = "iglu:com.acme/leak/jsonschema/1-0-0"
    target = write_schema(outside, uri, object_schema(uri))
    root = tmp_path / "schemas"
    (root / "com.acme" / "leak" / "jsonschema").mkdir(parents=True)
    os.symlink(target, root / "com.acme" / "leak" / "jsonschema" / "1-0-0")
    repository = FileRepository("0", FileRepositorySpec(path="schemas"), SimpleNamespace(base_dir=tmp_path))
    assert await repository.fetch(SchemaKey.parse(uri)) is None


def test_backends_build_locations_only_from_parsed_keys() -> None:
    key = SchemaKey.parse(GOOD)
    http = HttpRepository("0", HttpRepositorySpec(url="https://iglu.example.com/base/"), None)
    assert http.url_for(key) == "https://iglu.example.com/base/schemas/com.acme/checkout_done/jsonschema/1-0-12"
    server = HttpRepository(
        "0", HttpRepositorySpec(url="https://iglu.example.com", api="iglu_server", api_key="k", suffix=".json"), None
    )
    assert server.url_for(key) == "https://iglu.example.com/api/schemas/com.acme/checkout_done/jsonschema/1-0-12.json"
    s3 = S3Repository("0", S3RepositorySpec(bucket="b", prefix="iglu"), None)
    assert s3.key_for(key) == "iglu/com.acme/checkout_done/jsonschema/1-0-12"


def test_spec_checks_refuse_unsafe_settings() -> None:
    assert [where for where, _ in HttpRepositorySpec(url="file:///etc", suffix="/../x").check()] == [
        ("url",), ("suffix",)
    ]
    assert [where for where, _ in HttpRepositorySpec(url="https://x", api="iglu_server").check()] == [("api_key",)]
    assert [where for where, _ in S3RepositorySpec(bucket="b", prefix="a/../../b").check()] == [("prefix",)]
    assert quote_table("iglu.schemas") == '"iglu"."schemas"'
    for bad in ['x"; DROP TABLE y; --', "a.b.c", "", "1abc", "a b"]:
        with pytest.raises(ValueError, match="not a table name"):
            quote_table(bad)
