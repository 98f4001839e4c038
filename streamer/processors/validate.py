"""Validate each event, and each of its contexts, against its JSON Schema.

Schemas come from the pipeline's registry; compiled jsonschema-rs validators are
cached there, so a warm pipeline does one registry lookup per schema and batch (kept in a dict for
the batch) and ``is_valid`` per event and context.
Only an event that fails ``is_valid`` pays for collecting detailed errors. An
event whose schema cannot be resolved is invalid, with an error saying whether
the schema is missing, broken, or its registry unreachable.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from streamer.core.components import Context, Processor, ProcessorSpec
from streamer.core.envelope import Envelope, ErrorDetail
from streamer.core.registry import ResolvedSchema, SchemaResolver

__all__ = ["Validate", "ValidateSpec", "error_details"]


class ValidateSpec(ProcessorSpec, tag="validate", kw_only=True):
    """Check events and their contexts against their schemas."""

    max_errors: Annotated[
        int, msgspec.Meta(ge=1, description="Errors recorded per event at most; the rest are counted.")
    ] = 20


def instance_path(parts: Any, root: str = "$") -> str:
    path = root
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def error_details(validator: Any, instance: Any, schema: str | None, root: str, limit: int) -> list[ErrorDetail]:
    details: list[ErrorDetail] = []
    for error in validator.iter_errors(instance):
        if len(details) == limit:
            details.append(ErrorDetail(path=root, keyword="too_many_errors", message="further errors omitted"))
            break
        keyword = error.schema_path[-1] if error.schema_path else "schema"
        details.append(
            ErrorDetail(
                path=instance_path(error.instance_path, root),
                keyword=str(keyword),
                message=error.message,
                schema=schema,
            )
        )
    return details


class Validate(Processor):
    Spec = ValidateSpec
    spec: ValidateSpec

    def __init__(self, spec: ValidateSpec, context: Context) -> None:
        super().__init__(spec, context)
        self.resolver: SchemaResolver = context.resolver

    async def process(self, envelopes: list[Envelope]) -> list[Envelope]:
        entries = self._cached_entries(envelopes)
        if entries is None:
            entries = {}
            for uri in _schemas_named(envelopes):
                entry = self.resolver.lookup(uri)
                entries[uri] = entry if entry is not None else await self.resolver.resolve(uri)
        return self._check(envelopes, entries)

    def process_nowait(self, envelopes: list[Envelope]) -> list[Envelope] | None:
        entries = self._cached_entries(envelopes)
        return None if entries is None else self._check(envelopes, entries)

    def _cached_entries(self, envelopes: list[Envelope]) -> dict[str, ResolvedSchema] | None:
        """The cache entries of every schema the envelopes name, or ``None`` if one is not cached.

        Most units name a handful of schemas many times over (a tp2 request: 25 events of one or
        two schemas, each with the same context): one lookup each.
        """
        lookup = self.resolver.lookup
        entries: dict[str, ResolvedSchema] = {}
        for envelope in envelopes:
            uri = envelope.schema
            if uri is not None and uri not in entries:
                entry = lookup(uri)
                if entry is None:
                    return None
                entries[uri] = entry
            contexts = envelope.contexts
            if contexts:
                for context in contexts:
                    uri = context.schema
                    if uri not in entries:
                        entry = lookup(uri)
                        if entry is None:
                            return None
                        entries[uri] = entry
        return entries

    def _check(self, envelopes: list[Envelope], entries: dict[str, ResolvedSchema]) -> list[Envelope]:
        limit = self.spec.max_errors
        for envelope in envelopes:
            uri = envelope.schema
            if uri is None:
                if not envelope.valid:
                    continue  # could not even be decoded; its error says why
                envelope.fail(ErrorDetail(keyword="schema", message="the event names no schema"))
            else:
                entry = entries[uri]
                if entry.error is not None:
                    envelope.fail(ErrorDetail(keyword=entry.error.keyword, message=str(entry.error), schema=uri))
                elif not entry.validator.is_valid(envelope.payload):
                    for detail in error_details(entry.validator, envelope.payload, uri, "$", limit):
                        envelope.fail(detail)
            contexts = envelope.contexts
            if contexts:
                for index, context in enumerate(contexts):
                    uri = context.schema
                    entry = entries[uri]
                    if entry.error is not None:
                        envelope.fail(
                            ErrorDetail(
                                path=f"$.contexts[{index}]",
                                keyword=entry.error.keyword,
                                message=str(entry.error),
                                schema=uri,
                            )
                        )
                    elif not entry.validator.is_valid(context.data):
                        root = f"$.contexts[{index}].data"
                        for detail in error_details(entry.validator, context.data, uri, root, limit):
                            envelope.fail(detail)
        return envelopes


def _schemas_named(envelopes: list[Envelope]) -> list[str]:
    """Every schema URI the envelopes and their contexts name, once each, in order."""
    named: dict[str, None] = {}
    for envelope in envelopes:
        if envelope.schema is not None:
            named[envelope.schema] = None
        for context in envelope.contexts or ():
            named[context.schema] = None
    return list(named)
