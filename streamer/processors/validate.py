"""Validate each event, and each of its contexts, against its JSON Schema.

Schemas come from the pipeline's registry; compiled jsonschema-rs validators are
cached there, so a warm pipeline does a dict lookup and ``is_valid`` per event.
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

    async def _entry(self, uri: str) -> ResolvedSchema:
        entry = self.resolver.lookup(uri)
        if entry is None:
            entry = await self.resolver.resolve(uri)
        return entry

    async def process(self, envelopes: list[Envelope]) -> list[Envelope]:
        limit = self.spec.max_errors
        for envelope in envelopes:
            if not envelope.valid and envelope.schema is None:
                continue  # could not even be decoded; its error says why
            uri = envelope.schema
            if uri is None:
                envelope.fail(ErrorDetail(keyword="schema", message="the event names no schema"))
            else:
                entry = await self._entry(uri)
                if entry.error is not None:
                    envelope.fail(ErrorDetail(keyword=entry.error.keyword, message=str(entry.error), schema=uri))
                elif not entry.validator.is_valid(envelope.payload):
                    for detail in error_details(entry.validator, envelope.payload, uri, "$", limit):
                        envelope.fail(detail)
            if envelope.contexts:
                for index, context in enumerate(envelope.contexts):
                    root = f"$.contexts[{index}].data"
                    entry = await self._entry(context.schema)
                    if entry.error is not None:
                        envelope.fail(
                            ErrorDetail(
                                path=f"$.contexts[{index}]",
                                keyword=entry.error.keyword,
                                message=str(entry.error),
                                schema=context.schema,
                            )
                        )
                    elif not entry.validator.is_valid(context.data):
                        for detail in error_details(entry.validator, context.data, context.schema, root, limit):
                            envelope.fail(detail)
        return envelopes
