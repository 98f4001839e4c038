"""The resolver over real file repositories: order, errors, TTL, purge, negative cache, stampede, broken schemas."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from streamer.core.registry import (
    BrokenSchema,
    Repository,
    RepositorySpec,
    RepositoryUnavailable,
    ResolvedSchema,
    SchemaKey,
    SchemaNotFound,
    SchemaResolver,
)
from streamer.registry.file import FileRepository, FileRepositorySpec
from tests.registry.conftest import SchemaServer, object_schema, write_schema

pytestmark = pytest.mark.anyio

URI = "iglu:com.acme/checkout/jsonschema/1-0-0"


def file_repo(root: Path, name: str, priority: int = 0, prefixes: list[str] | None = None) -> FileRepository:
    spec = FileRepositorySpec(path=str(root), name=name, priority=priority, vendor_prefixes=prefixes or [])
    return FileRepository(name, spec, SimpleNamespace(base_dir=root.parent))


def requiring(uri: str, field: str) -> dict[str, Any]:
    return object_schema(uri, **{field: {"type": "string"}})


def accepts(entry: ResolvedSchema, instance: Any) -> bool:
    assert entry.error is None, entry.error
    return bool(entry.validator.is_valid(instance))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    return first, second


# Resolution order ----------------------------------------------------------------------------------


async def test_lower_priority_number_is_asked_first(dirs: tuple[Path, Path]) -> None:
    first, second = dirs
    write_schema(first, URI, requiring(URI, "a"))
    write_schema(second, URI, requiring(URI, "b"))
    resolver = SchemaResolver([file_repo(second, "second", priority=5), file_repo(first, "first", priority=1)])
    entry = await resolver.resolve(URI)
    assert entry.repository == "first"
    assert accepts(entry, {"a": "x"}) and not accepts(entry, {"b": "x"})


async def test_vendor_prefix_match_comes_before_priority(dirs: tuple[Path, Path]) -> None:
    first, second = dirs
    write_schema(first, URI, requiring(URI, "a"))
    write_schema(second, URI, requiring(URI, "b"))
    resolver = SchemaResolver(
        [file_repo(first, "first", priority=0), file_repo(second, "second", priority=9, prefixes=["com.acme"])]
    )
    assert (await resolver.resolve(URI)).repository == "second"
    other = "iglu:com.other/thing/jsonschema/1-0-0"
    write_schema(first, other, requiring(other, "a"))
    write_schema(second, other, requiring(other, "b"))
    assert (await resolver.resolve(other)).repository == "first"


async def test_a_repository_without_the_schema_passes_to_the_next(dirs: tuple[Path, Path]) -> None:
    first, second = dirs
    write_schema(second, URI, requiring(URI, "b"), suffix=".json")
    resolver = SchemaResolver([file_repo(first, "first"), file_repo(second, "second", priority=1)])
    entry = await resolver.resolve(URI)
    assert entry.repository == "second"
    assert resolver.fetches == 2


# Errors ----------------------------------------------------------------------------------------------


async def test_not_found_anywhere_names_every_registry(dirs: tuple[Path, Path]) -> None:
    resolver = SchemaResolver([file_repo(dirs[0], "first"), file_repo(dirs[1], "second")])
    entry = await resolver.resolve(URI)
    assert isinstance(entry.error, SchemaNotFound)
    assert entry.error.keyword == "schema_not_found"
    assert str(entry.error) == f"{URI} is in no registry (asked: first, second)"


async def test_a_registry_down_is_not_the_same_as_not_found(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    down = file_repo(tmp_path / "missing", "mount")
    resolver = SchemaResolver([down, file_repo(dirs[0], "first", priority=1)])
    entry = await resolver.resolve(URI)
    assert isinstance(entry.error, RepositoryUnavailable)
    assert entry.error.keyword == "registry_unavailable"
    assert "mount: schema directory" in str(entry.error) and "does not exist" in str(entry.error)
    # ...but a registry that is up and has it still wins.
    write_schema(dirs[0], URI, requiring(URI, "a"))
    resolver.purge()
    assert (await resolver.resolve(URI)).repository == "first"


class Exploding(Repository):
    """A backend with a bug: raises something that is not a RepositoryUnavailable."""

    Spec = RepositorySpec

    async def fetch(self, key: SchemaKey) -> bytes | None:
        raise KeyError("boom")


async def test_a_backend_bug_is_an_unavailable_registry_not_a_crash(dirs: tuple[Path, Path]) -> None:
    exploding = Exploding("0", SimpleNamespace(name="buggy", priority=0, vendor_prefixes=[]), None)
    resolver = SchemaResolver([exploding, file_repo(dirs[0], "first", priority=1)])
    entry = await resolver.resolve(URI)
    assert isinstance(entry.error, RepositoryUnavailable)
    assert "buggy: KeyError" in str(entry.error)


# Cache: TTL, purge, negative entries, size ------------------------------------------------------------


async def test_ttl_zero_keeps_a_schema_until_purged(dirs: tuple[Path, Path]) -> None:
    write_schema(dirs[0], URI, requiring(URI, "a"))
    resolver = SchemaResolver([file_repo(dirs[0], "first")], ttl=0)
    assert accepts(await resolver.resolve(URI), {"a": "x"})
    write_schema(dirs[0], URI, requiring(URI, "b"))
    assert accepts(resolver.lookup(URI) or await resolver.resolve(URI), {"a": "x"})
    assert resolver.purge(URI) == 1
    assert resolver.lookup(URI) is None
    assert accepts(await resolver.resolve(URI), {"b": "x"})
    write_schema(dirs[0], URI, requiring(URI, "c"))
    assert resolver.purge() == 1
    assert accepts(await resolver.resolve(URI), {"c": "x"})
    assert resolver.purge("iglu:com.acme/never/jsonschema/1-0-0") == 0


async def test_ttl_expiry_picks_up_a_change(dirs: tuple[Path, Path]) -> None:
    write_schema(dirs[0], URI, requiring(URI, "a"))
    resolver = SchemaResolver([file_repo(dirs[0], "first")], ttl=0.6)
    assert accepts(await resolver.resolve(URI), {"a": "x"})
    write_schema(dirs[0], URI, requiring(URI, "b"))
    assert accepts(await resolver.resolve(URI), {"a": "x"})  # still cached
    await anyio.sleep(0.65)
    assert resolver.lookup(URI) is None
    assert accepts(await resolver.resolve(URI), {"b": "x"})


async def test_misses_are_cached_for_negative_ttl(dirs: tuple[Path, Path]) -> None:
    resolver = SchemaResolver([file_repo(dirs[0], "first")], negative_ttl=0.6)
    for _ in range(100):
        entry = resolver.lookup(URI) or await resolver.resolve(URI)
        assert isinstance(entry.error, SchemaNotFound)
    assert resolver.fetches == 1
    write_schema(dirs[0], URI, requiring(URI, "a"))
    assert isinstance((await resolver.resolve(URI)).error, SchemaNotFound)  # still remembered as missing
    await anyio.sleep(0.65)
    assert accepts(await resolver.resolve(URI), {"a": "x"})
    assert resolver.fetches == 2


async def test_a_flood_of_unknown_schemas_does_not_evict_good_ones(dirs: tuple[Path, Path]) -> None:
    write_schema(dirs[0], URI, requiring(URI, "a"))
    resolver = SchemaResolver([file_repo(dirs[0], "first")], max_entries=5)
    await resolver.resolve(URI)
    for n in range(50):
        await resolver.resolve(f"iglu:com.acme/unknown{n}/jsonschema/1-0-0")
    assert resolver.statistics()["misses"] == 5
    fetches = resolver.fetches
    assert accepts(await resolver.resolve(URI), {"a": "x"})
    assert resolver.fetches == fetches


async def test_max_entries_evicts_the_oldest(dirs: tuple[Path, Path]) -> None:
    uris = [f"iglu:com.acme/s{n}/jsonschema/1-0-0" for n in range(3)]
    for uri in uris:
        write_schema(dirs[0], uri, requiring(uri, "a"))
    resolver = SchemaResolver([file_repo(dirs[0], "first")], max_entries=2)
    for uri in uris:
        await resolver.resolve(uri)
    assert resolver.lookup(uris[0]) is None
    assert resolver.lookup(uris[1]) is not None and resolver.lookup(uris[2]) is not None


async def test_stale_schema_serves_while_its_registry_is_down(tmp_path: Path) -> None:
    root = tmp_path / "schemas"
    write_schema(root, URI, requiring(URI, "a"))
    resolver = SchemaResolver([file_repo(root, "first")], ttl=0.3, negative_ttl=0.5)
    assert accepts(await resolver.resolve(URI), {"a": "x"})
    root.rename(tmp_path / "unmounted")
    await anyio.sleep(0.35)
    entry = await resolver.resolve(URI)
    assert accepts(entry, {"a": "x"})
    fetches = resolver.fetches
    assert accepts(await resolver.resolve(URI), {"a": "x"})  # retried only after negative_ttl
    assert resolver.fetches == fetches
    # A purge drops the stale copy: the registry's state is what is seen.
    resolver.purge()
    assert isinstance((await resolver.resolve(URI)).error, RepositoryUnavailable)


# Stampede -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("present", [True, False], ids=["found", "missing"])
async def test_concurrent_first_requests_fetch_once(tmp_path: Path, present: bool) -> None:
    root = tmp_path / "served"
    root.mkdir()
    if present:
        write_schema(root, URI, requiring(URI, "a"))
    with SchemaServer(root) as server:
        server.delay = 0.2  # every caller arrives while the first fetch is under way
        from streamer.registry.http import HttpRepository, HttpRepositorySpec

        repository = HttpRepository("0", HttpRepositorySpec(url=server.url), None)
        # negative_ttl=0: even a miss that is forgotten at once is shared by the waiters.
        resolver = SchemaResolver([repository], negative_ttl=0)
        results: list[ResolvedSchema] = []

        async def one() -> None:
            results.append(await resolver.resolve(URI))

        try:
            async with anyio.create_task_group() as tg:
                for _ in range(50):
                    tg.start_soon(one)
        finally:
            await repository.aclose()
    assert len(results) == 50
    assert len({id(r) for r in results}) == 1
    assert resolver.fetches == 1
    assert len(server.requests) == 1


async def test_a_cancelled_fetch_lets_a_waiter_fetch_itself(tmp_path: Path) -> None:
    root = tmp_path / "served"
    write_schema(root, URI, requiring(URI, "a"))
    with SchemaServer(root) as server:
        server.delay = 0.3
        from streamer.registry.http import HttpRepository, HttpRepositorySpec

        repository = HttpRepository("0", HttpRepositorySpec(url=server.url), None)
        resolver = SchemaResolver([repository])
        results: list[ResolvedSchema] = []

        async def impatient() -> None:
            with anyio.move_on_after(0.1):
                await resolver.resolve(URI)

        async def patient() -> None:
            await anyio.sleep(0.02)
            results.append(await resolver.resolve(URI))

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(impatient)
                tg.start_soon(patient)
        finally:
            await repository.aclose()
    assert accepts(results[0], {"a": "x"})


async def test_a_fetch_under_way_during_a_purge_is_not_cached(tmp_path: Path) -> None:
    root = tmp_path / "served"
    write_schema(root, URI, requiring(URI, "a"))
    with SchemaServer(root) as server:
        server.delay = 0.3
        from streamer.registry.http import HttpRepository, HttpRepositorySpec

        repository = HttpRepository("0", HttpRepositorySpec(url=server.url), None)
        resolver = SchemaResolver([repository])
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(resolver.resolve, URI)
                await anyio.sleep(0.1)
                # The schema changes and is purged while the old version is on its way.
                write_schema(root, URI, requiring(URI, "b"))
                resolver.purge(URI)
            server.delay = 0
            assert resolver.lookup(URI) is None
            assert accepts(await resolver.resolve(URI), {"b": "x"})
        finally:
            await repository.aclose()


# Broken schemas -------------------------------------------------------------------------------------------


BROKEN = {
    "not JSON": ("{not json", "is not JSON"),
    "not an object": ("[1, 2]", "is not a JSON object"),
    "bad keyword": (
        json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "type": "strnig"}),
        "is not a valid JSON Schema at type",
    ),
    "bad nested keyword": (
        json.dumps({"type": "object", "properties": {"a": {"minLength": -1}}}),
        "is not a valid JSON Schema at properties/a/minLength",
    ),
    "wrong self": (
        json.dumps(object_schema("iglu:com.acme/other/jsonschema/1-0-0")),
        "describes itself as iglu:com.acme/other/jsonschema/1-0-0",
    ),
    "iglu meta without self": (
        json.dumps({"$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#"}),
        "has no `self` block",
    ),
    "unknown meta-schema": (
        json.dumps({"$schema": "https://example.com/my-meta", "type": "object"}),
        "does not compile",
    ),
    "remote ref": (
        json.dumps({"type": "object", "properties": {"a": {"$ref": "https://example.com/defs.json"}}}),
        "its $ref https://example.com/defs.json is remote and remote references are not allowed",
    ),
    "relative ref without base": (
        json.dumps({"properties": {"a": {"$ref": "defs.json"}}}),
        "does not compile",
    ),
    "dangling local ref": (
        json.dumps({"properties": {"a": {"$ref": "#/definitions/missing"}}}),
        "does not compile",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_broken_schema_is_a_clear_error_naming_it(dirs: tuple[Path, Path], case: str) -> None:
    text, expected = BROKEN[case]
    write_schema(dirs[0], URI, text)
    resolver = SchemaResolver([file_repo(dirs[0], "first")])
    entry = await resolver.resolve(URI)
    assert isinstance(entry.error, BrokenSchema), entry.error
    assert entry.error.keyword == "schema_invalid"
    message = str(entry.error)
    assert message.startswith(f"schema {URI} from first "), message
    assert expected in message
    assert "\n" not in message


async def test_iglu_self_describing_schemas_compile_as_draft_4(dirs: tuple[Path, Path]) -> None:
    document = {
        "$schema": "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#",
        "self": {"vendor": "com.acme", "name": "checkout", "format": "jsonschema", "version": "1-0-0"},
        "type": "object",
        "properties": {"n": {"type": "number", "minimum": 0, "exclusiveMinimum": True}},
    }
    write_schema(dirs[0], URI, document)
    resolver = SchemaResolver([file_repo(dirs[0], "first")])
    entry = await resolver.resolve(URI)
    assert accepts(entry, {"n": 1}) and not accepts(entry, {"n": 0})


async def test_remote_refs_are_fetched_only_from_allowed_prefixes(tmp_path: Path, dirs: tuple[Path, Path]) -> None:
    served = tmp_path / "served"
    (served / "defs").mkdir(parents=True)
    (served / "defs" / "name.json").write_text(json.dumps({"type": "string", "maxLength": 3}))
    with SchemaServer(served) as server:
        ref = f"{server.url}/schemas/defs/name.json"
        write_schema(dirs[0], URI, {"type": "object", "properties": {"a": {"$ref": ref}}})
        refused = SchemaResolver([file_repo(dirs[0], "first")])
        assert "is remote and remote references are not allowed" in str((await refused.resolve(URI)).error)
        other = SchemaResolver([file_repo(dirs[0], "first")], allow_remote_refs=["https://schemas.example.com/"])
        assert "is remote and remote references are not allowed" in str((await other.resolve(URI)).error)
        allowed = SchemaResolver([file_repo(dirs[0], "first")], allow_remote_refs=[f"{server.url}/schemas/"])
        entry = await allowed.resolve(URI)
        assert accepts(entry, {"a": "abc"}) and not accepts(entry, {"a": "abcd"})
        anywhere = SchemaResolver([file_repo(dirs[0], "first")], allow_remote_refs=True)
        assert accepts(await anywhere.resolve(URI), {"a": "abc"})
        missing = f"{server.url}/schemas/defs/missing.json"
        write_schema(dirs[1], URI, {"properties": {"a": {"$ref": missing}}})
        gone = SchemaResolver([file_repo(dirs[1], "second")], allow_remote_refs=True)
        assert f"its $ref {missing} could not be fetched" in str((await gone.resolve(URI)).error)
