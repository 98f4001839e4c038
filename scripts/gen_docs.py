"""Generate ``docs/connectors.md`` and ``docs/pipeline.schema.json`` from the connector specs.

Usage::

    .venv/bin/python scripts/gen_docs.py           # rewrite both files
    .venv/bin/python scripts/gen_docs.py --check   # exit 1 if either is stale

Both files are derived from the msgspec structs that the config loader itself
uses (through :func:`msgspec.inspect.type_info` and
:func:`streamer.core.spec.pipeline_schema`), so they cannot drift from the code
without ``tests/test_config_docs.py`` noticing. Every connector in the catalog is
covered, built-in or registered through the ``streamer.connectors`` entry points.
"""

from __future__ import annotations

import argparse
import inspect as pyinspect
import json
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from msgspec import inspect as mi

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from streamer.core.catalog import KINDS, Catalog, Kind  # noqa: E402
from streamer.core.components import Spec  # noqa: E402
from streamer.core.spec import allow_interpolation, pipeline_schema  # noqa: E402

CONNECTORS_MD = ROOT / "docs" / "connectors.md"
SCHEMA_JSON = ROOT / "docs" / "pipeline.schema.json"
REGENERATE = ".venv/bin/python scripts/gen_docs.py"

__all__ = [
    "CONNECTORS_MD",
    "REGENERATE",
    "SCHEMA_JSON",
    "allow_interpolation",
    "connectors_markdown",
    "described",
    "field_description",
    "schema_text",
    "struct_fields",
]

KIND_TITLES: dict[str, str] = {
    "input": "Inputs",
    "processor": "Processors",
    "sink": "Sinks",
    "repository": "Schema repositories",
    "route": "HTTP routes (protocols)",
}
KIND_WHERE: dict[str, str] = {
    "input": "a value under `inputs:` (a mapping of name to input)",
    "processor": "an item of `processors:` (run in order)",
    "sink": "a value under `sinks:` (a mapping of name to sink)",
    "repository": "an item of `registry.repositories:`",
    "route": "an item of an HTTP input's `routes:`",
}


# --- The JSON Schema ---------------------------------------------------------------------------

def schema_text(catalog: Catalog) -> str:
    """The committed ``docs/pipeline.schema.json``: the config schema, with interpolation allowed."""
    schema = pipeline_schema(catalog)
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


# --- Reading the structs -----------------------------------------------------------------------


def _unwrap(info: Any) -> Any:
    while isinstance(info, mi.Metadata):
        info = info.type
    return info


def _metadata(info: Any) -> Iterator[dict[str, Any]]:
    while isinstance(info, mi.Metadata):
        yield info.extra_json_schema or {}
        info = info.type


def _non_null(info: Any) -> Any | None:
    """The one non-``None`` member of an optional type, else ``None``."""
    info = _unwrap(info)
    if isinstance(info, mi.UnionType):
        members = [t for t in info.types if not isinstance(_unwrap(t), mi.NoneType)]
        if len(members) == 1:
            return members[0]
    return None


def field_description(field: Any) -> str | None:
    """A field's description: its own ``Meta``, or that of the non-null member of an optional.

    A field whose type is a struct with a docstring is described by that docstring.
    """
    for extra in _metadata(field.type):
        if extra.get("description"):
            return str(extra["description"])
    member = _non_null(field.type)
    if member is not None:
        for extra in _metadata(member):
            if extra.get("description"):
                return str(extra["description"])
    struct = _struct_of(field.type)
    if struct is not None and struct.cls.__doc__:
        return _doc_summary(struct.cls.__doc__)
    return None


def field_examples(field: Any) -> list[Any]:
    for candidate in (field.type, _non_null(field.type)):
        for extra in _metadata(candidate):
            if extra.get("examples"):
                return list(extra["examples"])
    return []


def _struct_of(info: Any) -> Any | None:
    """The struct a field holds directly or as an optional, if any."""
    base = _unwrap(info)
    if isinstance(base, mi.StructType):
        return base
    member = _non_null(base)
    if member is not None and isinstance(_unwrap(member), mi.StructType):
        return _unwrap(member)
    return None


def struct_fields(cls: type) -> tuple[Any, ...]:
    try:
        info = mi.type_info(cls)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not a valid msgspec spec: {exc}") from exc
    assert isinstance(info, mi.StructType)
    return info.fields


def _nested_structs(info: Any) -> Iterator[Any]:
    """Every struct type reachable inside a field type (through unions, lists, dicts)."""
    info = _unwrap(info)
    if isinstance(info, mi.StructType):
        yield info
    elif isinstance(info, mi.UnionType):
        for member in info.types:
            yield from _nested_structs(member)
    elif isinstance(info, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        yield from _nested_structs(info.item_type)
    elif isinstance(info, mi.DictType):
        yield from _nested_structs(info.value_type)


def described(cls: type) -> Iterator[tuple[type, Any, str | None]]:
    """``(struct, field, description)`` for every field of ``cls`` and of the structs inside it."""
    seen: set[type] = set()
    todo = [cls]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for field in struct_fields(current):
            yield current, field, field_description(field)
            todo.extend(s.cls for s in _nested_structs(field.type))


def _doc_summary(doc: str) -> str:
    text = pyinspect.cleandoc(doc).split("\n\n", 1)[0]
    return " ".join(text.split())


# --- Markdown ----------------------------------------------------------------------------------


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _constraints(info: Any) -> list[str]:
    out = []
    for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        value = getattr(info, attr, None)
        if value is not None:
            out.append(f"{symbol} {value}")
    if getattr(info, "multiple_of", None) is not None:
        out.append(f"multiple of {info.multiple_of}")
    if getattr(info, "min_length", None) is not None:
        out.append(f"length >= {info.min_length}")
    if getattr(info, "max_length", None) is not None:
        out.append(f"length <= {info.max_length}")
    if getattr(info, "pattern", None) is not None:
        out.append(f"matches `{info.pattern}`")
    return out


def render_type(info: Any) -> str:
    """A short human form of a msgspec type: ``int (>= 1)``, ``list[string]``, ``"a" | "b"``."""
    info = _unwrap(info)
    simple: dict[type, str] = {
        mi.IntType: "int",
        mi.FloatType: "float",
        mi.StrType: "string",
        mi.BoolType: "bool",
        mi.NoneType: "null",
        mi.AnyType: "any",
        mi.BytesType: "bytes",
        mi.DateTimeType: "datetime",
        mi.DateType: "date",
        mi.TimeType: "time",
        mi.TimeDeltaType: "duration",
        mi.UUIDType: "uuid",
        mi.DecimalType: "decimal",
    }
    for kind, name in simple.items():
        if isinstance(info, kind):
            constraints = _constraints(info)
            return f"{name} ({', '.join(constraints)})" if constraints else name
    if isinstance(info, mi.LiteralType):
        return " | ".join(_json(v) for v in info.values)
    if isinstance(info, mi.UnionType):
        return " or ".join(render_type(t) for t in info.types)
    if isinstance(info, (mi.ListType, mi.SetType, mi.FrozenSetType, mi.VarTupleType)):
        inner = f"list[{render_type(info.item_type)}]"
        constraints = _constraints(info)
        return f"{inner} ({', '.join(constraints)})" if constraints else inner
    if isinstance(info, mi.DictType):
        return f"map[{render_type(info.key_type)}, {render_type(info.value_type)}]"
    if isinstance(info, mi.StructType):
        return "object"
    return type(info).__name__.removesuffix("Type").lower()


def _default(field: Any) -> str:
    if field.required:
        return "**required**"
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:  # pragma: no cover - msgspec always sets one of them for optional fields
        return ""
    if isinstance(value, msgspec.Struct):
        return "(see below)"
    return f"`{_json(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(fields: tuple[Any, ...], prefix: str, nested: dict[str, str], skip: frozenset[str]) -> Iterator[str]:
    for field in fields:
        name = field.encode_name
        if name in skip:
            continue
        key = f"{prefix}{name}"
        description = _inline(field_description(field) or "**(no description)**")
        examples = field_examples(field)
        if examples:
            description += " Example: " + ", ".join(f"`{_json(e)}`" for e in examples)
        if key in nested:
            link = f"[{nested[key]}](#{_kind_anchor(nested[key])})"
            container = _unwrap(field.type)
            type_text = f"map[string, {link}]" if isinstance(container, mi.DictType) else f"list[{link}]"
        else:
            type_text = render_type(field.type)
        default = _default(field)
        if field.required and prefix:
            default += f" (when `{prefix.rstrip('.')}` is set)"
        yield f"| `{key}` | {_cell(type_text)} | {_cell(default)} | {_cell(description)} |"
        struct = _struct_of(field.type)
        if struct is not None:
            yield from _rows(struct.fields, f"{key}.", nested, frozenset())
            continue
        base = _unwrap(field.type)
        if isinstance(base, mi.ListType) and isinstance(_unwrap(base.item_type), mi.StructType):
            yield from _rows(_unwrap(base.item_type).fields, f"{key}[].", {}, frozenset())
        elif isinstance(base, mi.DictType) and isinstance(_unwrap(base.value_type), mi.StructType):
            yield from _rows(_unwrap(base.value_type).fields, f"{key}.<name>.", {}, frozenset())


def _table(fields: tuple[Any, ...], nested: dict[str, str] | None = None, skip: frozenset[str] = frozenset()) -> str:
    rows = list(_rows(fields, "", nested or {}, skip | {"type"}))
    if not rows:
        return "No settings besides `type` and the keys above.\n" if skip else "No settings besides `type`.\n"
    header = "| Key | Type | Default | Description |\n|---|---|---|---|\n"
    return header + "\n".join(rows) + "\n"


def _kind_anchor(kind: str) -> str:
    return {"repository": "repositories"}.get(kind, f"{kind}s")


def _kind_base(spec: type) -> type:
    """The class right below :class:`Spec` in a connector spec's ancestry (``SinkSpec``, ...)."""
    for cls in spec.__mro__:
        if Spec in cls.__bases__:
            return cls
    return spec


_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_TABLE_BORDER = re.compile(r"^=+( +=+)+\s*$")


def _module_doc(module: Any) -> str:
    """A connector module's docstring as Markdown: RST literals and ``::`` blocks converted.

    A literal block is fenced as YAML when its introduction mentions an example.
    """
    doc = pyinspect.getdoc(module) or ""
    out: list[str] = []
    text: list[str] = []
    lines = doc.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if _TABLE_BORDER.match(line):
            # An RST simple table (three border lines): keep it aligned in a plain block.
            table = [line]
            borders = 1
            index += 1
            while index < len(lines) and borders < 3:
                table.append(lines[index])
                borders += bool(_TABLE_BORDER.match(lines[index]))
                index += 1
            out.append(_inline("\n".join(text)))
            text = []
            out.append("\n```\n" + "\n".join(table) + "\n```\n")
            continue
        if not line.rstrip().endswith("::"):
            text.append(line)
            index += 1
            continue
        intro = line.rstrip()[:-2].rstrip()
        text.append(f"{intro}:" if intro and not intro.endswith(":") else intro)
        out.append(_inline("\n".join(text)))
        text = []
        block: list[str] = []
        index += 1
        while index < len(lines) and (not lines[index].strip() or lines[index][:1] in (" ", "\t")):
            block.append(lines[index])
            index += 1
        body = textwrap.dedent("\n".join(block)).strip("\n")
        language = "yaml" if "example" in intro.lower() else ""
        out.append(f"\n```{language}\n{body}\n```\n")
    out.append(_inline("\n".join(text)))
    return "\n\n".join(part.strip("\n") for part in out if part.strip()).strip() + "\n"


def _inline(text: str) -> str:
    return _ROLE.sub(r"`\1`", _LITERAL.sub(lambda m: "`" + m.group(1).replace("`", "") + "`", text))


def connectors_markdown(catalog: Catalog) -> str:
    """The whole of ``docs/connectors.md`` for the connectors ``catalog`` knows."""
    loaded: dict[Kind, list[tuple[str, Any]]] = {
        kind: [(name, catalog.load(kind, name)) for name in catalog.names(kind)] for kind in KINDS
    }
    out: list[str] = [
        "# Connectors",
        "",
        "<!-- Generated by scripts/gen_docs.py from the connector specs; do not edit by hand. -->",
        f"<!-- After changing a spec, run: {REGENERATE} -->",
        "",
        "Every connector is picked by its `type` key; the other keys are its settings. Unknown keys are",
        "errors (`streamer lint` suggests the closest known key). Any value may use `${VAR}` or",
        "`${VAR:-default}` (see [configuration.md](configuration.md#environment-variables)).",
        "",
        "| Kind | Where it is written | Types |",
        "|---|---|---|",
    ]
    for kind in KINDS:
        links = ", ".join(f"[`{name}`](#{kind}-{name.replace('_', '-')})" for name, _ in loaded[kind]) or "none"
        out.append(f"| {kind} | {KIND_WHERE[kind]} | {links} |")
    out += ["", "## Pipeline file", "", "The top level of a pipeline file and its fixed sections.", ""]
    out.append(_frame_table())
    for kind in KINDS:
        out += ["", f'<a id="{_kind_anchor(kind)}"></a>', "", f"## {KIND_TITLES[kind]}", ""]
        out.append(f"Written as {KIND_WHERE[kind]}.")
        bases = {_kind_base(cls.Spec) for _, cls in loaded[kind]}
        common: frozenset[str] = frozenset()
        if len(bases) == 1:
            base = next(iter(bases))
            common_fields = tuple(f for f in struct_fields(base) if f.encode_name != "type")
            if common_fields:
                common = frozenset(f.encode_name for f in common_fields)
                out += ["", f"Every {kind} also takes these keys:", "", _table(common_fields)]
        for name, cls in loaded[kind]:
            spec = cls.Spec
            anchor = f"{kind}-{name.replace('_', '-')}"
            out += ["", f'<a id="{anchor}"></a>', "", f"### {kind} `{name}`", ""]
            if spec.__doc__:
                out += [_inline(_doc_summary(spec.__doc__)), ""]
            backends = sorted(getattr(cls, "backends", ()))
            facts = [f"`type: {name}`", f"class `{cls.__module__}:{cls.__qualname__}`"]
            backend_text = ", ".join(backends)
            reason = getattr(cls, "backend_reason", "")
            if reason:
                backend_text += f" ({reason})"
            facts.append(f"backends: {backend_text}")
            out += ["; ".join(facts) + ".", ""]
            if name in getattr(catalog, "implicit", lambda kind: [])(kind):
                out += ["Implicit: added, with its defaults, to every pipeline that does not configure it.", ""]
            module_doc = _module_doc(sys.modules[cls.__module__])
            if module_doc.strip():
                out += [module_doc]
            out.append(_table(struct_fields(spec), getattr(spec, "__nested__", {}), common))
    return "\n".join(out).rstrip() + "\n"


def _frame_table() -> str:
    from streamer.core import spec as core_spec

    frame = core_spec._Frame
    nested = {"inputs": "input", "processors": "processor", "sinks": "sink", "registry.repositories": "repository"}
    return _table(struct_fields(frame), nested)


# --- Entry point -------------------------------------------------------------------------------


def outputs(catalog: Catalog) -> dict[Path, str]:
    return {CONNECTORS_MD: connectors_markdown(catalog), SCHEMA_JSON: schema_text(catalog)}


def main(argv: list[str] | None = None) -> int:
    from streamer.connectors import default_catalog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only report whether the files are up to date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(default_catalog()).items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        verb = "is stale" if args.check else "written"
        print(f"{path.relative_to(ROOT)}: {verb}", file=sys.stderr)
    if args.check and stale:
        print(f"run: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
