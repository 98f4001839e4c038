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
    └── BrokenSchema          found, but not a valid JSON Schema
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import anyio
import msgspec

from streamer.core.components import Spec, spec_type

__all__ = [
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


# Each part is a restricted token: no '/', no '..', nothing that can leave a directory,
# prefix or URL path.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
_URI = re.compile(rf"iglu:({_PART})/({_PART})/({_PART})/([0-9]+)-([0-9]+)-([0-9]+)")


@dataclass(frozen=True, slots=True)
class SchemaKey:
    """A parsed Iglu URI: ``iglu:vendor/name/format/model-revision-addition``."""

    vendor: str
    name: str
    format: str
    version: str

    @classmethod
    def parse(cls, uri: str) -> SchemaKey:
        match = _URI.fullmatch(uri)
        if match is None or ".." in uri:
            raise InvalidSchemaURI(
                f"{uri!r} is not a schema URI; expected iglu:vendor/name/format/M-R-A "
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

    name: Annotated[str | None, msgspec.Meta(description="Shown in errors; defaults to `type[index]`.")] = None
    priority: Annotated[
        int, msgspec.Meta(description="Lower is asked first, after repositories matching the vendor prefix.")
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
    does not have it, and raises :class:`RepositoryUnavailable` when it cannot tell.
    """

    Spec: ClassVar[type[msgspec.Struct]]
    backends: ClassVar[frozenset[str]] = frozenset({"asyncio", "trio"})

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
    """A cache entry: a compiled validator, or the error that resolving gave."""

    __slots__ = ("document", "error", "expires", "uri", "validator")

    def __init__(
        self,
        uri: str,
        validator: Any = None,
        document: Any = None,
        error: SchemaError | None = None,
        expires: float = float("inf"),
    ) -> None:
        self.uri = uri
        self.validator = validator
        self.document = document
        self.error = error
        self.expires = expires


def _meta_check(document: Any, uri: str) -> None:
    """Check a schema against its meta-schema with the ``jsonschema`` package (load time only)."""
    import jsonschema  # imported lazily: only when a schema is first loaded

    if not isinstance(document, dict):
        raise BrokenSchema(f"schema {uri} is not a JSON object")
    try:
        cls = jsonschema.validators.validator_for(document, default=jsonschema.Draft202012Validator)
        cls.check_schema(document)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise BrokenSchema(f"schema {uri} is not a valid JSON Schema at {where}: {exc.message}") from exc


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
        compile_options: dict[str, Any] | None = None,
    ) -> None:
        self.repositories: list[Repository] = []
        self.use(repositories)
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._compile_options = compile_options or {}
        self._cache: dict[str, ResolvedSchema] = {}
        self._inflight: dict[str, anyio.Event] = {}
        self.fetches = 0
        """How many times a repository was asked; tests observe stampede protection with it."""

    def use(self, repositories: list[Repository]) -> None:
        """Set the repositories; Iglu order is priority ascending, stable for equal priorities."""
        self.repositories = sorted(repositories, key=lambda r: r.priority)

    async def open(self) -> None:
        for repository in self.repositories:
            await repository.open()

    async def aclose(self) -> None:
        for repository in self.repositories:
            await repository.aclose()

    def lookup(self, uri: str) -> ResolvedSchema | None:
        entry = self._cache.get(uri)
        if entry is not None and entry.expires < time.monotonic():
            del self._cache[uri]
            return None
        return entry

    async def resolve(self, uri: str) -> ResolvedSchema:
        """Return the cache entry for ``uri``, fetching once however many callers wait."""
        while True:
            entry = self.lookup(uri)
            if entry is not None:
                return entry
            waiting = self._inflight.get(uri)
            if waiting is None:
                break
            await waiting.wait()
        done = anyio.Event()
        self._inflight[uri] = done
        try:
            entry = await self._load(uri)
            self._store(entry)
            return entry
        finally:
            del self._inflight[uri]
            done.set()

    def purge(self, uri: str | None = None) -> int:
        """Forget one cached schema, or all of them; return how many entries went."""
        if uri is None:
            count = len(self._cache)
            self._cache.clear()
            return count
        return 1 if self._cache.pop(uri, None) is not None else 0

    def ordered_for(self, vendor: str) -> list[Repository]:
        preferred = [r for r in self.repositories if r.matches_vendor(vendor)]
        return preferred + [r for r in self.repositories if r not in preferred]

    async def fetch_document(self, key: SchemaKey) -> tuple[bytes, Repository]:
        """Ask repositories in order; the first that has the schema wins."""
        unavailable: list[str] = []
        for repository in self.ordered_for(key.vendor):
            self.fetches += 1
            try:
                raw = await repository.fetch(key)
            except RepositoryUnavailable as exc:
                unavailable.append(f"{repository.name}: {exc}")
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
        import jsonschema_rs

        now = time.monotonic()
        try:
            key = SchemaKey.parse(uri)
            raw, repository = await self.fetch_document(key)
            try:
                document = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise BrokenSchema(f"schema {uri} from {repository.name} is not JSON: {exc}") from exc
            _meta_check(document, uri)
            try:
                validator = jsonschema_rs.validator_for(document, **self._compile_options)
            except Exception as exc:  # jsonschema-rs raises ValueError/ReferencingError subclasses
                raise BrokenSchema(f"schema {uri} from {repository.name} does not compile: {exc}") from exc
        except SchemaError as exc:
            expires = now + self.negative_ttl
            return ResolvedSchema(uri, error=exc, expires=expires)
        expires = now + self.ttl if self.ttl > 0 else float("inf")
        return ResolvedSchema(uri, validator=validator, document=document, expires=expires)

    def _store(self, entry: ResolvedSchema) -> None:
        if len(self._cache) >= self.max_entries:
            # Evict the oldest insertion: dicts keep insertion order, so this is O(1).
            self._cache.pop(next(iter(self._cache)))
        self._cache[entry.uri] = entry
