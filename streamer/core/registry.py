"""Schema resolution: Iglu URIs, the repository interface, and the validator cache.

A :class:`Repository` is one backend (a directory, an Iglu server, a bucket, a
table). It only fetches schema documents. The :class:`SchemaResolver` owns the
rest: it asks repositories in Iglu resolver order (vendor-prefix matches first,
then priority), meta-validates what it gets, compiles it with jsonschema-rs and
caches the compiled validator, so a warm pipeline does no I/O per event.

Error hierarchy::

    SchemaError
    ├── InvalidSchemaURI      the URI is not strict Iglu form (or tries to escape)
    ├── SchemaNotFound        no repository has it
    ├── RepositoryUnavailable a repository could not be asked (down, timeout)
    └── BrokenSchema          found, but not a valid JSON Schema (or a refused remote $ref)

Cache rules:

- a resolved schema stays for ``ttl`` seconds (0: until purged); a failure
  (not found, down, broken) is remembered for ``negative_ttl`` seconds, in its
  own table, so a flood of unknown URIs cannot evict the good validators;
- concurrent first requests for one URI share one fetch (single flight);
- when a schema's TTL ends and every repository that could have it is down,
  the old validator keeps serving and the fetch is retried after ``negative_ttl``;
- ``purge`` forgets entries at once, and a fetch already under way when the purge
  happened is not stored, so what a repository holds after a purge is what is seen.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import anyio
import msgspec

from streamer.core.components import Spec, spec_type

__all__ = [
    "IGLU_META_SCHEMA",
    "BrokenSchema",
    "InvalidSchemaURI",
    "Repository",
    "RepositorySpec",
    "RepositoryUnavailable",
    "ResolvedSchema",
    "SchemaError",
    "SchemaKey",
    "SchemaNotFound",
    "SchemaResolver",
]

log = logging.getLogger("streamer.registry")

_FOREVER = float("inf")
_monotonic = time.monotonic


class SchemaError(Exception):
    """Base class for schema resolution failures; ``keyword`` lands in the invalid envelope."""

    keyword: ClassVar[str] = "schema"


class InvalidSchemaURI(SchemaError):
    keyword = "schema_uri"


class SchemaNotFound(SchemaError):
    keyword = "schema_not_found"


class RepositoryUnavailable(SchemaError):
    keyword = "registry_unavailable"


class BrokenSchema(SchemaError):
    keyword = "schema_invalid"


# Each part is a restricted token: no '/', no '%', no '\\', no '..', nothing that can leave
# a directory, a key prefix or a URL path. [0-9] and [A-Za-z] are ASCII-only on purpose.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"
_NUMBER = r"(?:0|[1-9][0-9]{0,8})"
_URI = re.compile(rf"iglu:({_PART})/({_PART})/({_PART})/({_NUMBER})-({_NUMBER})-({_NUMBER})", re.ASCII)

IGLU_META_SCHEMA = "http://iglucentral.com/schemas/com.snowplowanalytics.self-desc/schema/jsonschema/1-0-0#"
"""The ``$schema`` of Iglu self-describing schemas: JSON Schema draft 4 plus a ``self`` block."""


@dataclass(frozen=True, slots=True)
class SchemaKey:
    """A parsed Iglu URI: ``iglu:vendor/name/format/model-revision-addition``.

    Parsing is strict: ASCII letters, digits, ``_``, ``.`` and ``-`` only, each part
    starting with a letter or digit, no ``..`` anywhere, versions without leading
    zeros. So ``path`` is always safe to join to a directory, key prefix or URL.
    """

    vendor: str
    name: str
    format: str
    version: str

    @classmethod
    def parse(cls, uri: str) -> SchemaKey:
        match = _URI.fullmatch(uri) if isinstance(uri, str) else None
        if match is None or ".." in uri:
            shown = uri if isinstance(uri, str) and len(uri) <= 200 else f"{str(uri)[:200]}..."
            raise InvalidSchemaURI(
                f"{shown!r} is not a schema URI; expected iglu:vendor/name/format/M-R-A "
                "(for example iglu:com.acme/checkout/jsonschema/1-0-0)"
            )
        vendor, name, fmt, model, revision, addition = match.groups()
        return cls(vendor, name, fmt, f"{model}-{revision}-{addition}")

    @property
    def uri(self) -> str:
        return f"iglu:{self.vendor}/{self.name}/{self.format}/{self.version}"

    @property
    def path(self) -> str:
        """Relative path in Iglu layout: ``vendor/name/format/M-R-A``."""
        return f"{self.vendor}/{self.name}/{self.format}/{self.version}"


class RepositorySpec(Spec):
    """Settings every repository has: its name and its place in resolution order."""

    name: Annotated[
        str | None, msgspec.Meta(description="Shown in errors; defaults to `type[index]`.", examples=["central"])
    ] = None
    priority: Annotated[
        int,
        msgspec.Meta(
            description="Lower is asked first, after repositories matching the vendor prefix.", examples=[0, 10]
        ),
    ] = 0
    vendor_prefixes: Annotated[
        list[str],
        msgspec.Meta(
            description="Schemas whose vendor starts with one of these are asked here first.",
            examples=[["com.acme"]],
        ),
    ] = msgspec.field(default_factory=list)


class Repository(ABC):
    """One schema backend. Subclasses live in ``streamer/registry/<name>.py``.

    ``fetch`` returns the schema document's bytes, ``None`` when this repository
    does not have it, and raises :class:`RepositoryUnavailable` when it cannot tell
    (any other exception is treated the same way by the resolver). ``open`` may
    fail when the backend is down at start: the resolver logs it and the
    repository must try again on the next ``fetch``.
    """

    Spec: ClassVar[type[msgspec.Struct]]
    backends: ClassVar[frozenset[str]] = frozenset({"asyncio", "trio"})
    backend_reason: ClassVar[str] = ""
    requires: ClassVar[tuple[str, ...]] = ()
    """Modules this repository imports at run time beyond streamer's dependencies (see ``Component``)."""
    extra: ClassVar[str | None] = None
    """The ``streamer[...]`` extra that installs ``requires``."""

    def __init__(self, name: str, spec: Any, context: Any) -> None:
        self.name = spec.name or f"{spec_type(spec)}[{name}]"
        self.priority = spec.priority
        self.vendor_prefixes = tuple(spec.vendor_prefixes)
        self.spec = spec
        self.context = context

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect; called once before the pipeline starts."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @abstractmethod
    async def fetch(self, key: SchemaKey) -> bytes | None: ...

    def matches_vendor(self, vendor: str) -> bool:
        return any(vendor.startswith(prefix) for prefix in self.vendor_prefixes)


class ResolvedSchema:
    """A cache entry: a compiled validator, or the error that resolving gave.

    ``repository`` names where the document came from (``None`` for an error).
    """

    __slots__ = ("document", "error", "expires", "repository", "uri", "validator")

    def __init__(
        self,
        uri: str,
        validator: Any = None,
        document: Any = None,
        error: SchemaError | None = None,
        expires: float = float("inf"),
        repository: str | None = None,
    ) -> None:
        self.uri = uri
        self.validator = validator
        self.document = document
        self.error = error
        self.expires = expires
        self.repository = repository


class _Flight:
    """One fetch under way; waiters read ``result`` once ``done`` is set (``None``: it was cancelled)."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.result: ResolvedSchema | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _meta_check(document: Any, key: SchemaKey, origin: str) -> bool:
    """Check a schema against its meta-schema with the ``jsonschema`` package (load time only).

    Returns whether it is an Iglu self-describing schema (compiled as draft 4).
    """
    import jsonschema  # imported lazily: only when a schema is first loaded

    uri = key.uri
    if not isinstance(document, dict):
        raise BrokenSchema(f"schema {uri} from {origin} is not a JSON object")
    declared = document.get("$schema")
    iglu = isinstance(declared, str) and declared.rstrip("#") == IGLU_META_SCHEMA.rstrip("#")
    own = document.get("self")
    if own is not None:
        if not isinstance(own, dict):
            raise BrokenSchema(f"schema {uri} from {origin} has a `self` that is not an object")
        declared_uri = "iglu:{}/{}/{}/{}".format(*(own.get(k) for k in ("vendor", "name", "format", "version")))
        if declared_uri != uri:
            raise BrokenSchema(
                f"schema {uri} from {origin} describes itself as {declared_uri} in `self`; "
                "it is stored under the wrong path or has the wrong `self`"
            )
    elif iglu:
        raise BrokenSchema(f"schema {uri} from {origin} declares the Iglu meta-schema but has no `self` block")
    try:
        if iglu:
            cls: Any = jsonschema.Draft4Validator
        else:
            cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
        cls.check_schema(document)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise BrokenSchema(
            f"schema {uri} from {origin} is not a valid JSON Schema at {where}: {exc.message}"
        ) from exc
    return iglu


class _RemoteRefs:
    """The retriever jsonschema-rs calls for a ``$ref`` outside the schema document.

    ``allowed`` is ``False`` (refuse all), ``True`` (any http/https URL) or a list
    of URL prefixes. Refused and failed URLs are recorded so that the error can
    name them.
    """

    def __init__(self, allowed: bool | Sequence[str], timeout: float) -> None:
        self.allowed = allowed
        self.timeout = timeout
        self.refused: list[str] = []

    def permits(self, url: str) -> bool:
        if not url.startswith(("http://", "https://")):
            return False
        if isinstance(self.allowed, bool):
            return self.allowed
        return any(url.startswith(prefix) for prefix in self.allowed)

    def __call__(self, url: str) -> Any:
        if not self.permits(url):
            self.refused.append(url)
            raise ValueError(f"remote $ref {url} is not allowed")
        import json
        import urllib.request

        try:
            # permits() allowed only http(s) URLs, so urlopen cannot read a file: URL here.
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read(_MAX_REMOTE_REF_BYTES + 1)
        except OSError as exc:
            self.refused.append(url)
            raise ValueError(f"remote $ref {url} could not be fetched: {exc}") from exc
        if len(body) > _MAX_REMOTE_REF_BYTES:
            self.refused.append(url)
            raise ValueError(f"remote $ref {url} is larger than {_MAX_REMOTE_REF_BYTES} bytes")
        return json.loads(body)


_MAX_REMOTE_REF_BYTES = 1_048_576


class SchemaResolver:
    """Resolves URIs to compiled validators, with a TTL cache and single-flight fetches.

    ``lookup`` is the hot path: a dict read, no await. Only a miss awaits ``resolve``.
    """

    def __init__(
        self,
        repositories: list[Repository],
        *,
        ttl: float = 0.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
        allow_remote_refs: bool | Sequence[str] = False,
        remote_ref_timeout: float = 10.0,
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        self.repositories: list[Repository] = []
        self.use(repositories)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.allow_remote_refs: bool | Sequence[str] = (
            allow_remote_refs if isinstance(allow_remote_refs, bool) else tuple(allow_remote_refs)
        )
        self.remote_ref_timeout = remote_ref_timeout
        self._compile_options = compile_options or {}
        self._cache: dict[str, ResolvedSchema] = {}
        """Resolved schemas (validator set), oldest insertion first."""
        self._misses: dict[str, ResolvedSchema] = {}
        """Failures (error set), kept apart so that they never evict a validator."""
        self._inflight: dict[str, _Flight] = {}
        self._generation = 0
        """Bumped by every purge: a fetch that started before a purge is not stored."""
        self.fetches = 0
        """How many times a repository was asked; tests observe stampede protection with it."""

    def use(self, repositories: list[Repository]) -> None:
        """Set the repositories; Iglu order is priority ascending, stable for equal priorities."""
        self.repositories = sorted(repositories, key=lambda r: r.priority)

    async def open(self) -> None:
        """Open every repository; one that is down is logged and retried on its first fetch."""
        for repository in self.repositories:
            try:
                await repository.open()
            except Exception as exc:
                log.warning(
                    "schema registry not reachable at start, will retry on use registry=%s error=%s",
                    repository.name, _first_line(exc),
                )

    async def aclose(self) -> None:
        for repository in self.repositories:
            try:
                await repository.aclose()
            except Exception as exc:
                log.warning("schema registry close failed registry=%s error=%s", repository.name, _first_line(exc))

    def lookup(self, uri: str) -> ResolvedSchema | None:
        """The cached entry for ``uri`` if it has not expired; ``None`` means call :meth:`resolve`."""
        entry = self._cache.get(uri)
        if entry is None:
            entry = self._misses.get(uri)
            if entry is None:
                return None
        expires = entry.expires
        # Skipping the clock for entries that never expire (ttl: 0) saves a third of the lookup.
        if expires != _FOREVER and expires < _monotonic():
            return None
        return entry

    async def resolve(self, uri: str) -> ResolvedSchema:
        """Return the entry for ``uri``, fetching once however many callers wait. Never raises a SchemaError."""
        while True:
            entry = self.lookup(uri)
            if entry is not None:
                return entry
            flight = self._inflight.get(uri)
            if flight is None:
                break
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            # The task that fetched was cancelled: look again, and fetch ourselves if need be.
        flight = _Flight()
        self._inflight[uri] = flight
        generation = self._generation
        try:
            entry = await self._load(uri)
            if generation == self._generation:
                entry = self._store(entry)
            flight.result = entry
            return entry
        finally:
            if self._inflight.get(uri) is flight:
                del self._inflight[uri]
            flight.done.set()

    def purge(self, uri: str | None = None) -> int:
        """Forget one cached schema, or all of them; return how many entries went.

        A fetch under way is not joined by later callers and its result is not cached,
        so the next resolve asks the repositories again.
        """
        self._generation += 1
        if uri is None:
            count = len(self._cache) + len(self._misses)
            self._cache.clear()
            self._misses.clear()
            self._inflight.clear()
            return count
        self._inflight.pop(uri, None)
        count = 0
        if self._cache.pop(uri, None) is not None:
            count += 1
        if self._misses.pop(uri, None) is not None:
            count += 1
        return count

    def statistics(self) -> dict[str, int]:
        return {
            "cached": len(self._cache),
            "misses": len(self._misses),
            "inflight": len(self._inflight),
            "fetches": self.fetches,
        }

    def ordered_for(self, vendor: str) -> list[Repository]:
        """Iglu resolver order: repositories whose vendor prefix matches first, then by priority."""
        preferred = [r for r in self.repositories if r.matches_vendor(vendor)]
        return preferred + [r for r in self.repositories if r not in preferred]

    async def fetch_document(self, key: SchemaKey) -> tuple[bytes, Repository]:
        """Ask repositories in order; the first that has the schema wins.

        Raises :class:`SchemaNotFound` when every repository answered that it does not
        have it, :class:`RepositoryUnavailable` when none had it and some could not be asked.
        """
        unavailable: list[str] = []
        for repository in self.ordered_for(key.vendor):
            self.fetches += 1
            try:
                raw = await repository.fetch(key)
            except RepositoryUnavailable as exc:
                unavailable.append(f"{repository.name}: {exc}")
                continue
            except Exception as exc:
                # A backend bug or an unmapped client error must not crash the pipeline.
                log.warning(
                    "schema registry failed unexpectedly registry=%s schema=%s error=%r",
                    repository.name, key.uri, exc,
                )
                unavailable.append(f"{repository.name}: {type(exc).__name__}: {_first_line(exc)}")
                continue
            if raw is not None:
                return raw, repository
        if unavailable:
            raise RepositoryUnavailable(
                f"{key.uri} was not found and some registries could not be asked: " + "; ".join(unavailable)
            )
        names = ", ".join(r.name for r in self.repositories) or "none configured"
        raise SchemaNotFound(f"{key.uri} is in no registry (asked: {names})")

    async def _load(self, uri: str) -> ResolvedSchema:
        now = time.monotonic()
        try:
            key = SchemaKey.parse(uri)
            raw, repository = await self.fetch_document(key)
            try:
                document = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise BrokenSchema(f"schema {uri} from {repository.name} is not JSON: {exc}") from exc
            iglu = _meta_check(document, key, repository.name)
            if self.allow_remote_refs:
                # Remote refs are fetched with blocking I/O: keep it off the event loop.
                validator = await anyio.to_thread.run_sync(self._compile, document, key, repository.name, iglu)
            else:
                validator = self._compile(document, key, repository.name, iglu)
        except SchemaError as exc:
            return ResolvedSchema(uri, error=exc, expires=now + self.negative_ttl)
        expires = now + self.ttl if self.ttl > 0 else _FOREVER
        return ResolvedSchema(
            uri, validator=validator, document=document, expires=expires, repository=repository.name
        )

    def _compile(self, document: dict[str, Any], key: SchemaKey, origin: str, iglu: bool) -> Any:
        import jsonschema_rs

        refs = _RemoteRefs(self.allow_remote_refs, self.remote_ref_timeout)
        build: Callable[..., Any] = jsonschema_rs.Draft4Validator if iglu else jsonschema_rs.validator_for
        try:
            return build(document, retriever=refs, **self._compile_options)
        except Exception as exc:  # jsonschema-rs raises ValidationError/ReferencingError (ValueError subclasses)
            if refs.refused:
                ref = refs.refused[0]
                if refs.permits(ref):
                    why = f"its $ref {ref} could not be fetched"
                elif ref.startswith(("http://", "https://")):
                    why = (
                        f"its $ref {ref} is remote and remote references are not allowed "
                        "(registry.cache.allow_remote_refs)"
                    )
                else:
                    why = f"its $ref {ref} cannot be resolved"
                raise BrokenSchema(f"schema {key.uri} from {origin} does not compile: {why}") from exc
            raise BrokenSchema(f"schema {key.uri} from {origin} does not compile: {_first_line(exc)}") from exc

    def _store(self, entry: ResolvedSchema) -> ResolvedSchema:
        """Cache a fresh result; return what callers should use (an old validator if the refresh failed)."""
        uri = entry.uri
        if entry.error is None:
            table = self._cache
            self._misses.pop(uri, None)
        else:
            stale = self._cache.get(uri)
            if stale is not None and isinstance(entry.error, RepositoryUnavailable):
                # The TTL ran out while the registry is down: keep serving what we had.
                log.warning(
                    "schema registry down, serving the cached schema schema=%s retry_in=%ss error=%s",
                    uri, self.negative_ttl, entry.error,
                )
                stale.expires = entry.expires
                return stale
            self._cache.pop(uri, None)
            table = self._misses
        table.pop(uri, None)  # re-inserted below, at the young end
        if len(table) >= self.max_entries:
            # Evict the oldest insertion: dicts keep insertion order, so this is O(1).
            table.pop(next(iter(table)))
        table[uri] = entry
        return entry
