"""The pipeline spec: msgspec structs for the parts of a pipeline file that are not connectors.

Connector configs are tagged unions on ``type`` whose members come from the
catalog, so a file is read in two steps: the frame below with each connector
left as a mapping, then each connector converted to its own ``Spec`` (only the
connectors a pipeline names are imported). ``pipeline_schema`` builds the full
config JSON Schema from the same structs, with every registered connector.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

import msgspec

from streamer.core.catalog import Catalog, Kind, UnknownConnector
from streamer.core.components import spec_type
from streamer.core.config import ConfigError, Document, PathT, Problem, convert, dotted

__all__ = [
    "CacheSpec",
    "CompiledSpec",
    "Component",
    "RuntimeSpec",
    "allow_interpolation",
    "compile_document",
    "pipeline_schema",
]

Connector = dict[str, Any]


class RuntimeSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Process-wide settings."""

    shutdown_timeout: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            description="Seconds allowed after SIGTERM/SIGINT to finish in-flight work and flush sinks.",
        ),
    ] = 30.0
    drain_delay: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="Seconds to keep serving after SIGTERM/SIGINT while /ready answers 503, so a load "
            "balancer stops routing here before the listener closes. 0 closes it at once.",
        ),
    ] = 0.0
    gc_threshold: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="Allocations between two young-generation garbage collections in `streamer run`. "
            "Python's default (700) makes the collector run every few events; a larger threshold trades "
            "a little memory for throughput, and objects alive at start-up are frozen out of collection. "
            "0 keeps Python's settings.",
        ),
    ] = 50_000


class CacheSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The compiled-validator cache in front of the repositories."""

    max_entries: Annotated[int, msgspec.Meta(ge=1, description="Schemas kept compiled at most.")] = 10_000
    ttl: Annotated[
        float, msgspec.Meta(ge=0, description="Seconds a schema stays cached; 0 keeps it until purged.")
    ] = 0.0
    negative_ttl: Annotated[
        float,
        msgspec.Meta(ge=0, description="Seconds a schema that could not be resolved is remembered as missing."),
    ] = 5.0
    allow_remote_refs: Annotated[
        bool | list[str],
        msgspec.Meta(
            description="Whether a schema's `$ref` to an http(s) URL is fetched when the schema is compiled: "
            "false refuses every remote reference (the schema is then reported broken), true allows any, "
            "a list allows URLs starting with one of its prefixes.",
            examples=[False, ["https://schemas.example.com/"]],
        ),
    ] = False


def _default_processors() -> list[Connector]:
    return [{"type": "decode"}, {"type": "validate"}, {"type": "annotate"}]


def _frame(input_t: Any, processor_t: Any, sink_t: Any, repository_t: Any) -> tuple[type, type]:
    """The root struct, with connector slots typed as given (mappings, or unions of specs)."""
    registry = msgspec.defstruct(
        "Registry",
        [
            ("cache", Annotated[CacheSpec, msgspec.Meta(description="Validator cache.")],
             msgspec.field(default_factory=CacheSpec)),
            (
                "repositories",
                Annotated[
                    list[repository_t],
                    msgspec.Meta(description="Where schemas come from, asked in Iglu resolver order."),
                ],
                msgspec.field(default_factory=list),
            ),
        ],
        kw_only=True,
        forbid_unknown_fields=True,
    )
    registry.__doc__ = "Schema registries and their cache."
    root = msgspec.defstruct(
        "Pipeline",
        [
            ("name", Annotated[str, msgspec.Meta(description="Shown in logs and metrics.")], "pipeline"),
            ("runtime", RuntimeSpec, msgspec.field(default_factory=RuntimeSpec)),
            (
                "inputs",
                Annotated[dict[str, input_t], msgspec.Meta(description="Named inputs; at least one.")],
            ),
            (
                "processors",
                Annotated[
                    list[processor_t],
                    msgspec.Meta(description="Steps run in order on every event; default: decode, validate, annotate."),
                ],
                msgspec.field(default_factory=_default_processors),
            ),
            ("registry", registry, msgspec.field(default_factory=registry)),
            (
                "sinks",
                Annotated[
                    dict[str, sink_t],
                    msgspec.Meta(description="Named sinks; each event goes to every sink whose route matches."),
                ],
            ),
        ],
        kw_only=True,
        forbid_unknown_fields=True,
    )
    root.__doc__ = "A streamer pipeline: inputs -> processors -> named sinks."
    return root, registry


_Frame, _RegistryFrame = _frame(Connector, Connector, Connector, Connector)


@dataclass
class Component:
    name: str
    cls: Any
    spec: Any
    path: PathT
    children: dict[str, list[Component]] = field(default_factory=dict)
    """Nested connectors a spec declares in ``__nested__`` (an HTTP input's routes)."""


@dataclass
class CompiledSpec:
    """A checked pipeline: every connector resolved to its class and converted spec."""

    document: Document
    name: str
    runtime: RuntimeSpec
    cache: CacheSpec
    inputs: list[Component]
    processors: list[Component]
    repositories: list[Component]
    sinks: list[Component]

    def all_components(self) -> list[Component]:
        return [*self.inputs, *self.processors, *self.repositories, *self.sinks]


def _connector(
    document: Document, catalog: Catalog, kind: Kind, name: str, raw: Any, path: PathT
) -> Component:
    if not isinstance(raw, dict):
        raise ConfigError([document.problem(path, f"{dotted(path)} must be a mapping with a `type` key")])
    type_name = raw.get("type")
    if not isinstance(type_name, str):
        known = ", ".join(catalog.names(kind))
        raise ConfigError(
            [document.problem(path, f"{dotted(path)} needs `type: <{kind} type>` (one of: {known})")]
        )
    try:
        cls = catalog.load(kind, type_name)
    except UnknownConnector as exc:
        raise ConfigError([document.problem((*path, "type"), str(exc))]) from None
    spec = convert(document, path, raw, cls.Spec)
    problems: list[Problem] = []
    check = getattr(spec, "check", None)
    if check is not None:
        problems.extend(document.problem((*path, *where), message) for where, message in check())
    children: dict[str, list[Component]] = {}
    for field_name, child_kind in getattr(cls.Spec, "__nested__", {}).items():
        children[field_name] = []
        for index, child in enumerate(getattr(spec, field_name)):
            child_path = (*path, field_name, index)
            try:
                children[field_name].append(
                    _connector(document, catalog, child_kind, str(index), child, child_path)
                )
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Component(name, cls, spec, path, children)


def compile_document(document: Document, catalog: Catalog) -> CompiledSpec:
    """Check a whole pipeline; raise one :class:`ConfigError` listing every problem found."""
    frame: Any = convert(document, (), document.data if document.data is not None else {}, _Frame)
    problems: list[Problem] = []

    def each(kind: Kind, entries: list[tuple[str, Any, PathT]]) -> list[Component]:
        out = []
        for name, raw, path in entries:
            try:
                out.append(_connector(document, catalog, kind, name, raw, path))
            except ConfigError as exc:
                problems.extend(exc.problems)
        return out

    inputs = each("input", [(n, raw, ("inputs", n)) for n, raw in frame.inputs.items()])
    processors = each(
        "processor", [(str(i), raw, ("processors", i)) for i, raw in enumerate(frame.processors)]
    )
    repositories = each(
        "repository",
        [(str(i), raw, ("registry", "repositories", i)) for i, raw in enumerate(frame.registry.repositories)],
    )
    sinks = each("sink", [(n, raw, ("sinks", n)) for n, raw in frame.sinks.items()])
    configured = {spec_type(c.spec) for c in repositories}
    for type_name in catalog.implicit("repository"):
        if type_name not in configured:
            cls = catalog.load("repository", type_name)
            repositories.append(Component(type_name, cls, cls.Spec(), ("registry", "repositories")))
    problems.extend(_check_delivery(document, sinks))
    if not frame.inputs:
        problems.append(document.problem(("inputs",), "`inputs` is empty; name at least one input"))
    if not frame.sinks:
        problems.append(document.problem(("sinks",), "`sinks` is empty; name at least one sink"))
    if problems:
        raise ConfigError(problems)
    return CompiledSpec(
        document=document,
        name=frame.name,
        runtime=frame.runtime,
        cache=frame.registry.cache,
        inputs=inputs,
        processors=processors,
        repositories=repositories,
        sinks=sinks,
    )


def _check_delivery(document: Document, sinks: list[Component]) -> list[Problem]:
    """Rules between sinks: dead-letter sinks exist, write JSON lines and form no loop; ``when_full``."""
    problems: list[Problem] = []
    by_name = {sink.name: sink for sink in sinks}
    targets = {sink.spec.delivery.dead_letter for sink in sinks}
    for sink in sinks:
        if sink.spec.route == "dead_letters" and sink.name not in targets:
            problems.append(
                document.problem(
                    (*sink.path, "route"),
                    f"sink `{sink.name}` takes only dead letters, but no sink names it: add "
                    f"`delivery: {{dead_letter: {sink.name}}}` to the sinks it backs up, or choose another route",
                )
            )
        delivery = sink.spec.delivery
        where = (*sink.path, "delivery")
        target = delivery.dead_letter
        if target is not None:
            if target == sink.name:
                problems.append(
                    document.problem(
                        (*where, "dead_letter"), f"sink `{sink.name}` cannot be its own dead-letter sink; name another"
                    )
                )
            elif target not in by_name:
                close = difflib.get_close_matches(target, list(by_name), n=1)
                hint = f"; did you mean `{close[0]}`?" if close else f" (sinks: {', '.join(sorted(by_name))})"
                problems.append(document.problem((*where, "dead_letter"), f"no sink named `{target}`{hint}"))
            elif getattr(by_name[target].cls, "encoding", "json_lines") != "json_lines":
                problems.append(
                    document.problem(
                        (*where, "dead_letter"),
                        f"sink `{target}` ({spec_type(by_name[target].spec)}) stores rows, not the dead-letter "
                        "records (the envelope with the failing sink, error, attempts and time); name a sink that "
                        "writes JSON lines, such as a `file` or `kafka` sink",
                    )
                )
            else:
                seen = [sink.name]
                current: str | None = target
                while current is not None and current in by_name and current not in seen:
                    seen.append(current)
                    current = by_name[current].spec.delivery.dead_letter
                if current == sink.name:
                    chain = " -> ".join([*seen, sink.name])
                    problems.append(
                        document.problem(
                            (*where, "dead_letter"),
                            f"dead letters would loop ({chain}); the last sink of a dead-letter chain must have none",
                        )
                    )
        if delivery.when_full != "block":
            if delivery.required:
                problems.append(
                    document.problem(
                        (*where, "when_full"),
                        "a required sink can only block when full (it must hold every event it acknowledges); write "
                        f"`required: false` to make `{sink.name}` a best-effort shadow sink, or `when_full: block`",
                    )
                )
            elif delivery.when_full == "dead_letter" and target is None:
                problems.append(
                    document.problem(
                        (*where, "when_full"),
                        "`when_full: dead_letter` needs `dead_letter: <sink name>` next to it "
                        "(or `when_full: drop` to discard the overflow)",
                    )
                )
    return problems


def pipeline_schema(catalog: Catalog) -> dict[str, Any]:
    """The config JSON Schema, generated from every registered connector's spec."""

    def union(kind: Kind) -> Any:
        specs = tuple(with_nested(cls.Spec) for cls in catalog.load_all(kind))
        return Union[specs] if len(specs) > 1 else specs[0]  # noqa: UP007 - built at run time

    def with_nested(spec: Any) -> Any:
        nested = getattr(spec, "__nested__", {})
        if not nested:
            return spec
        # Re-declare the nested fields with the union of their connectors' specs.
        info: Any = msgspec.inspect.type_info(spec)
        described = {f.name: f for f in info.fields}
        fields: list[tuple[str, Any, Any]] = []
        for name, kind in nested.items():
            meta = msgspec.Meta(description=_field_description(described[name]))
            item_type = union(kind)
            default = described[name].default_factory
            fields.append((name, Annotated[list[item_type], meta], msgspec.field(default_factory=default)))  # type: ignore[valid-type]
        config = spec.__struct_config__
        return msgspec.defstruct(
            spec.__name__, fields, bases=(spec,), tag=config.tag, module=spec.__module__
        )

    root, _ = _frame(union("input"), union("processor"), union("sink"), union("repository"))
    schema: dict[str, Any] = allow_interpolation(msgspec.json.schema(root))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "streamer pipeline"
    return schema


def _field_description(info: Any) -> str | None:
    if isinstance(info.type, msgspec.inspect.Metadata):
        return (info.type.extra_json_schema or {}).get("description")
    return None


# --- Interpolation in the JSON Schema ---------------------------------------------------------

INTERPOLATED: dict[str, Any] = {
    "type": "string",
    "pattern": r"^.*\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}.*$",
    "description": "An environment variable reference (${VAR} or ${VAR:-default}), replaced when the file is loaded.",
}
_SCALARS = frozenset({"integer", "number", "boolean"})
_ANNOTATIONS = ("title", "description", "default", "examples")
_DATA_KEYS = frozenset({"default", "examples", "const", "enum"})


def allow_interpolation(node: Any) -> Any:
    """Let a ``${VAR}`` string stand wherever the schema expects a number or a boolean.

    Interpolation runs on the parsed YAML, and the loader converts ``"8080"`` to an
    int, so ``port: ${PORT:-8080}`` is valid; without this an editor would flag it.
    Idempotent: a node already offering the alternative is left alone.
    """
    if isinstance(node, list):
        for item in node:
            allow_interpolation(item)
        return node
    if not isinstance(node, dict):
        return node
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and INTERPOLATED in any_of:
        return node
    for key, value in node.items():
        if key not in _DATA_KEYS:
            allow_interpolation(value)
    kind = node.get("type")
    if isinstance(kind, str) and kind in _SCALARS:
        inner = {key: node.pop(key) for key in list(node) if key not in _ANNOTATIONS}
        node["anyOf"] = [inner, dict(INTERPOLATED)]
    return node
