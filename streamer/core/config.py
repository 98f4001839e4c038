"""Reading pipeline files: YAML with positions, env interpolation, and errors at file:line:col.

The YAML is parsed with ruamel.yaml's round-trip loader, which remembers where
every node is. It becomes plain Python data plus a side table from JSON path
(a tuple of keys and indices) to position, so that any later error, from
msgspec or from a connector's own checks, can point at the text.
"""

from __future__ import annotations

import datetime
import difflib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

__all__ = ["ConfigError", "Document", "PathT", "Problem", "convert", "interpolate", "load_document"]

PathT = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    col: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"


class ConfigError(Exception):
    """A pipeline file that cannot run; ``problems`` lists every one found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    file: str
    data: Any
    values: dict[PathT, tuple[int, int]] = field(default_factory=dict)
    """Where each value starts (1-based line, col)."""
    keys: dict[PathT, tuple[int, int]] = field(default_factory=dict)
    """Where each mapping key is written."""

    def position(self, path: PathT, *, key: bool = False) -> tuple[int, int]:
        """Position of ``path`` or of its nearest ancestor that has one."""
        for end in range(len(path), -1, -1):
            prefix = path[:end]
            if key and prefix in self.keys:
                return self.keys[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return (1, 1)

    def problem(self, path: PathT, message: str, *, key: bool = False) -> Problem:
        line, col = self.position(path, key=key)
        return Problem(self.file, line, col, message)


def load_document(text: str, file: str) -> Document:
    """Parse YAML text; a syntax error becomes a :class:`ConfigError` at its position."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = " ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise ConfigError([Problem(file, line, col, f"YAML syntax: {what}")]) from None
    except YAMLError as exc:
        raise ConfigError([Problem(file, 1, 1, f"YAML syntax: {exc}")]) from None
    document = Document(file=file, data=None)
    document.values[()] = (1, 1)
    document.data = _plain(root, (), document)
    return document


def _plain(node: Any, path: PathT, document: Document) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(node, CommentedMap):
        out: dict[Any, Any] = {}
        for key, value in node.items():
            child = (*path, str(key))
            key_line, key_col = node.lc.key(key)
            value_line, value_col = node.lc.value(key)
            document.keys[child] = (key_line + 1, key_col + 1)
            document.values[child] = (value_line + 1, value_col + 1)
            out[str(key)] = _plain(value, child, document)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for index, value in enumerate(node):
            child = (*path, index)
            line, col = node.lc.item(index)
            document.values[child] = (line + 1, col + 1)
            items.append(_plain(value, child, document))
        return items
    if isinstance(node, str):
        return str(node)  # drop ruamel's scalar string subclasses
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):
        # YAML reads an unquoted 2026-01-01T00:00:00Z as a timestamp (ruamel's TimeStamp, which msgspec does
        # not know); its ISO text converts to a datetime field and stays text in a string field.
        return node.isoformat()
    return node


_VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\{[^}]*\}?")


def interpolate(document: Document, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in scalar strings, in place.

    It runs after parsing, so a value can never add keys or items. ``$$`` is a
    literal ``$``. An undefined variable without a default is a problem.
    """
    env = os.environ if environ is None else environ
    problems: list[Problem] = []

    def substitute(text: str, path: PathT) -> str:
        def one(match: re.Match[str]) -> str:
            whole = match.group(0)
            if whole == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name is None:
                problems.append(
                    document.problem(path, f"malformed variable `{whole}`; write ${{NAME}} or ${{NAME:-default}}")
                )
                return whole
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                document.problem(
                    path,
                    f"environment variable `{name}` is not set; set it or give a default: ${{{name}:-value}}",
                )
            )
            return whole

        return _VARIABLE.sub(one, text)

    def walk(node: Any, path: PathT) -> Any:
        if isinstance(node, dict):
            for key, value in node.items():
                node[key] = walk(value, (*path, key))
            return node
        if isinstance(node, list):
            for index, value in enumerate(node):
                node[index] = walk(value, (*path, index))
            return node
        if isinstance(node, str) and "$" in node:
            return substitute(node, path)
        return node

    document.data = walk(document.data, ())
    return problems


# msgspec errors end in " - at `$.a.b[0]`"; dict keys show as "[...]".
_AT = re.compile(r" - at `\$(.*)`$")
_SEGMENT = re.compile(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]")
_UNKNOWN = re.compile(r"Object contains unknown field `(.+?)`")
_MISSING = re.compile(r"Object missing required field `(.+?)`")


def _parse_at(text: str) -> tuple[str, PathT]:
    match = _AT.search(text)
    if match is None:
        return text, ()
    path: list[str | int] = []
    for name, index in _SEGMENT.findall(match.group(1)):
        if name:
            path.append(name)
        elif index == "...":
            break  # a dict key msgspec does not name: stop at the nearest known ancestor
        else:
            path.append(int(index))
    return text[: match.start()], tuple(path)


def _fields_at(target: Any, path: PathT) -> list[str]:
    """Field names of the struct reached by following ``path`` through ``target``'s type."""
    info: Any = msgspec.inspect.type_info(target)
    for part in path:
        info = _unwrap(info)
        if isinstance(info, msgspec.inspect.StructType):
            match = next((f for f in info.fields if f.encode_name == part), None)
            if match is None:
                return []
            info = match.type
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        elif isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return []
    info = _unwrap(info)
    if isinstance(info, msgspec.inspect.StructType):
        return [f.encode_name for f in info.fields]
    return []


def _unwrap(info: Any) -> Any:
    """Look through ``Annotated`` metadata and optional unions to the struct inside."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType):
            structs = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(structs) != 1:
                return info
            info = structs[0]
        else:
            return info


def dotted(path: PathT) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def convert(document: Document, prefix: PathT, data: Any, target: Any) -> Any:
    """``msgspec.convert`` with errors mapped to file:line:col and a hint on what to write.

    Raises :class:`ConfigError` with one problem.
    """
    try:
        return msgspec.convert(data, target, strict=False)
    except msgspec.ValidationError as exc:
        text, relative = _parse_at(str(exc))
        path = prefix + relative
        unknown = _UNKNOWN.match(text)
        if unknown is not None:
            name = unknown.group(1)
            known = [f for f in _fields_at(target, relative) if f != "type"]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean `{close[0]}`?" if close else f"known keys: {', '.join(known) or 'none'}"
            message = f"unknown key `{name}` in {dotted(path)}; {hint}"
            raise ConfigError([document.problem((*path, name), message, key=True)]) from None
        missing = _MISSING.match(text)
        if missing is not None:
            message = f"{dotted(path)} is missing the required key `{missing.group(1)}`"
            raise ConfigError([document.problem(path, message)]) from None
        raise ConfigError([document.problem(path, f"{dotted(path)}: {text}")]) from None


def read_document(file: str | Path) -> Document:
    path = Path(file)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem(str(path), 1, 1, f"cannot read the pipeline file: {exc.strerror}")]) from None
    return load_document(text, str(path))
