"""How an envelope becomes a Kafka record: its topic (a name or a template of fields), key and headers.

Paths name envelope fields (``schema``, ``id``), source fields (``source.input``) or keys inside the
fields that are objects (``payload.order.id``, ``tags.team``, ``source.metadata.user_id``). The sink
turns each path into a getter once, when it is built; per event only the getters run.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable
from typing import Any

import msgspec

from streamer.core.envelope import Envelope, Source

__all__ = ["MAX_TOPIC", "envelope_getter", "template_fields", "to_bytes", "topic_function", "valid_topic"]

_ENVELOPE_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Envelope))
_SOURCE_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Source))
_DICT_FIELDS = frozenset({"payload", "atomic", "tags", "source.headers", "source.metadata"})
"""Fields whose keys a dotted path may go into (``payload.order.id``)."""

TOPIC_CHARS = re.compile(r"[^A-Za-z0-9._-]")
MAX_TOPIC = 249
_CACHE_LIMIT = 10_000


def envelope_getter(path: str) -> Callable[[Envelope], Any]:
    """A function reading the envelope field ``path`` (``schema``, ``source.input``, ``payload.order.id``);
    ``None`` where the path leads nowhere. Raises ValueError naming the fields there are."""
    parts = path.split(".")
    if not all(parts):
        raise ValueError(f"{path!r} is not a field path (empty part)")
    if parts[0] not in _ENVELOPE_FIELDS:
        raise ValueError(
            f"{path!r} is not an envelope field; use one of {', '.join(sorted(_ENVELOPE_FIELDS))}, "
            f"`source.<{'|'.join(sorted(_SOURCE_FIELDS))}>`, or a dotted path into {', '.join(sorted(_DICT_FIELDS))}"
        )
    depth = 1
    if parts[0] == "source" and len(parts) > 1:
        if parts[1] not in _SOURCE_FIELDS:
            raise ValueError(
                f"{path!r}: the source has no field {parts[1]!r}; it has {', '.join(sorted(_SOURCE_FIELDS))}"
            )
        depth = 2
    attribute, keys = ".".join(parts[:depth]), tuple(parts[depth:])
    if keys and attribute not in _DICT_FIELDS:
        raise ValueError(
            f"{path!r}: {attribute} has no keys to go into; paths may go into {', '.join(sorted(_DICT_FIELDS))}"
        )
    get = operator.attrgetter(attribute)
    if not keys:
        return get

    def dig(envelope: Envelope) -> Any:
        value = get(envelope)
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return dig


_json = msgspec.json.Encoder().encode


def to_bytes(value: Any) -> bytes | None:
    """A field's value as record bytes: text as UTF-8, nothing for None, anything else as JSON."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode()
    return _json(value)


def _to_text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return _json(value).decode()


def template_fields(template: str) -> list[str]:
    """The field paths a topic template names (``{schema_name}``); ValueError for a malformed one."""
    fields = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or spec or conversion:
            raise ValueError(f"{template!r}: write fields as {{name}} or {{dotted.path}}, without format specs")
        fields.append(name)
    return fields


def topic_function(template: str, fallback: str | None) -> Callable[[Envelope], str | None]:
    """The function giving an envelope's topic from ``template``, ``fallback`` where a field is absent or
    empty (``None`` without one). Memoised per distinct set of values: a regex runs per new topic, not per event."""
    fields = template_fields(template)
    if not fields:
        return lambda envelope: template
    getters: list[Callable[[Envelope], Any]] = [
        (lambda envelope: "valid" if envelope.valid else "invalid") if name == "route" else envelope_getter(name)
        for name in fields
    ]
    names = [f"f{index}" for index in range(len(fields))]
    pattern = template
    for name, field in zip(names, fields, strict=True):
        pattern = pattern.replace("{" + field + "}", "{" + name + "}", 1)
    cache: dict[tuple[Any, ...], str | None] = {}

    def topic_of(envelope: Envelope) -> str | None:
        values = tuple(get(envelope) for get in getters)
        try:
            return cache[values]
        except (KeyError, TypeError):  # TypeError: a value that cannot be hashed (a dict from a path)
            pass
        texts = [_to_text(value) for value in values]
        if any(text is None for text in texts):
            topic = fallback
        else:
            topic = TOPIC_CHARS.sub("_", pattern.format(**dict(zip(names, texts, strict=True))))[:MAX_TOPIC]
        try:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[values] = topic
        except TypeError:
            pass
        return topic

    return topic_of


def valid_topic(name: str) -> bool:
    return 0 < len(name) <= MAX_TOPIC and name not in (".", "..") and not TOPIC_CHARS.search(name)
