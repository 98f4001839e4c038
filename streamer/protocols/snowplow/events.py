"""Snowplow tracker events -> envelopes: the hot path shared by ``GET /i`` and ``POST .../tp2``.

One tracker event is a flat mapping of string fields (``e``, ``aid``, ``p``,
``tv``, ``eid``, ``url``, ``ue_px``, ``cx``, ...), as the tracker protocol and
``iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4`` define it.
:meth:`EventBuilder.build` turns one into an envelope (:meth:`EventBuilder.build_many`
does the same for the events of one tp2 body, faster):

- ``atomic`` is the field mapping itself (not copied), minus the pieces decoded
  elsewhere (``ue_px``/``ue_pr`` into ``schema``/``payload``, ``cx``/``co`` into
  ``contexts``); a piece that fails to decode stays in ``atomic`` as sent;
- ``ue`` events: ``schema`` and ``payload`` are the self-describing event inside
  the ``unstruct_event`` wrapper; every other known type: ``schema`` is the
  route's atomic schema and ``payload`` is ``atomic`` (the same dict);
- ``event_tstamp`` is ``ttm`` (true time), else ``dtm`` (device created), else
  ``stm`` (device sent), each in epoch milliseconds;
- tracker overrides ``ip``, ``ua`` and ``tnuid`` replace the request's client IP,
  user agent and network user id (a new ``Source``, only for events that carry one).

Protocol errors (bad base64, JSON that is not the right wrapper, a missing or
non-string field, an unknown event type) mark the envelope invalid with an
error whose path is ``$.atomic.<field>``; schema validation of the event and of
every context is left to the ``validate`` processor. When the atomic fields
themselves are wrong the envelope names no schema, so the error list says what
the route found and nothing twice.

Per event this costs: one id from the pool (made 2048 at a time), one ``Envelope``
made in one call, one base64 decode plus one typed msgspec decode per
``ue_px``/``cx`` (straight into :class:`~streamer.core.envelope.SelfDescribing`
structs), one ``datetime``, one shape lookup (the tuple of field names) and a few dict reads; in
``build_many`` with no Python call of its own for the usual event. See
``docs/performance.md`` (Snowplow tp2) for what each part measured.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from streamer.core.envelope import (
    NO_SCHEMA_PARTS,
    Envelope,
    ErrorDetail,
    SchemaParts,
    SelfDescribing,
    Source,
    new_event_id,
    new_event_ids,
    schema_parts,
)
from streamer.core.nesting import MAX_JSON_DEPTH, depth_limited
from streamer.http.cookie import NETWORK_USER_ID

__all__ = [
    "ATOMIC_SCHEMA",
    "CONTEXTS_PREFIX",
    "EVENT_TYPES",
    "FIELDS",
    "NETWORK_USER_ID",
    "PAYLOAD_DATA_PREFIX",
    "UNSTRUCT_PREFIX",
    "EventBuilder",
    "decode_base64",
]

PROTOCOL = "snowplow"
ATOMIC_SCHEMA = "iglu:io.streamer/snowplow_event/jsonschema/1-0-0"
PAYLOAD_DATA_PREFIX = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-"
UNSTRUCT_PREFIX = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-"
CONTEXTS_PREFIX = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-"

EVENT_TYPES: dict[str, str] = {
    "pv": "page view",
    "pp": "page ping",
    "se": "structured event",
    "ue": "self-describing (unstructured) event",
    "tr": "transaction",
    "ti": "transaction item",
    "ad": "ad impression (legacy)",
    "ev": "structured event (legacy)",
}
"""Values of ``e`` Snowplow enrich accepts; any other is an invalid event."""

_FIELD_NAMES = """
    tna aid p dtm tz e tid eid tv duid nuid uid vid ip res url page refr fp ctype cookie lang
    f_pdf f_qt f_realp f_wma f_dir f_fla f_java f_gears f_ag cd ds cs vp mac
    pp_mix pp_max pp_miy pp_may ad_ba ad_ca ad_ad ad_uid
    tr_id tr_af tr_tt tr_tx tr_sh tr_ci tr_st tr_co tr_cu
    ti_id ti_sk ti_nm ti_na ti_ca ti_pr ti_qu ti_cu
    sa sn st sp se_ca se_ac se_la se_pr se_va ue_na ue_pr ue_px co cx ua tnuid stm sid ttm
"""
FIELDS: frozenset[str] = frozenset(_FIELD_NAMES.split())
"""The properties of payload_data 1-0-4's items (which has ``additionalProperties: false``)."""
_REQUIRED = frozenset({"e", "tv", "p"})
_TIMESTAMPS = ("ttm", "dtm", "stm")
"""Where the event time comes from, best first: true time, created on the device, sent by the device."""
_OVERRIDES = frozenset({"ip", "ua", "tnuid"})
_CONTEXT_FIELDS = frozenset({"cx", "co"})
_UNUSUAL = _OVERRIDES | {"ttm", "co", "ue_pr"}
"""Fields that send an event down :meth:`EventBuilder.build` rather than the inline path of ``build_many``."""
_URLSAFE = bytes.maketrans(b"-_", b"+/")
_MAX_SHAPES = 1024


class _Unstruct(msgspec.Struct):
    schema: str
    data: SelfDescribing


class _Contexts(msgspec.Struct):
    schema: str
    data: list[SelfDescribing]


_decode_unstruct = depth_limited(msgspec.json.Decoder(_Unstruct).decode)
_decode_contexts = depth_limited(msgspec.json.Decoder(_Contexts).decode)
_decode_unstruct_unchecked = msgspec.json.Decoder(_Unstruct).decode
_decode_contexts_unchecked = msgspec.json.Decoder(_Contexts).decode


_PAD = ("", "===", "==", "=")  # by len(text) % 4; 1 leaves a length a2b_base64 refuses


def _decode_base64_stdlib(padded: str) -> bytes:
    # UnicodeEncodeError is a ValueError: not base64 either. Strict mode refuses characters outside the
    # alphabet and misplaced padding instead of skipping them.
    return binascii.a2b_base64(padded.encode("ascii").translate(_URLSAFE), strict_mode=True)


_b64decode_padded: Callable[[str], bytes]
try:
    # SIMD base64 (the `fast` extra): about half the cost of translate + a2b_base64 on a tracker's ue_px.
    from pybase64 import b64decode as _simd_b64decode

    def _b64decode_padded(padded: str) -> bytes:
        # One alphabet at a time: pybase64 deprecates "+" or "/" in data decoded with altchars "-_".
        # validate=True refuses what strict mode refuses; a mix of both alphabets fails here and is
        # left to the standard library, which takes it.
        if "+" in padded or "/" in padded:
            return _simd_b64decode(padded, None, True)
        return _simd_b64decode(padded, b"-_", True)

except ImportError:  # pragma: no cover - the same decoding, slower
    _b64decode_padded = _decode_base64_stdlib


def decode_base64(text: str) -> bytes:
    """URL-safe or standard base64, padded or not; raises ``ValueError`` saying what is wrong."""
    padded = text + _PAD[len(text) & 3]
    try:
        return _b64decode_padded(padded)
    except ValueError:
        return _decode_base64_stdlib(padded)  # raises, with the standard library's explanation


_SECONDS: dict[str, datetime] = {}
"""Epoch seconds (the digits before the last three) -> that second as a UTC time."""
_MILLISECONDS = {f"{n:03d}": timedelta(milliseconds=n) for n in range(1000)}
_MAX_SECONDS = 4096


def _timestamp(value: str) -> datetime | None:
    """Epoch milliseconds (ASCII digits, checked by the caller) as a UTC time; ``None`` when out of range.

    The events of a tracker fall within a few seconds of each other: the second is looked up by its
    digits and the milliseconds added (~0.5 us, against ~1.3 for ``datetime.fromtimestamp``).
    """
    if len(value) < 4:
        value = value.rjust(4, "0")
    second = _SECONDS.get(value[:-3])
    try:
        if second is None:
            second = datetime.fromtimestamp(int(value[:-3]), UTC)
            if second.year < 9999:  # adding the milliseconds to a cached second never overflows
                if len(_SECONDS) >= _MAX_SECONDS:  # timestamps come from clients: bound the cache
                    _SECONDS.clear()
                _SECONDS[value[:-3]] = second
        return second + _MILLISECONDS[value[-3:]]
    except (OverflowError, OSError, ValueError):
        return None


def _error(field: str, keyword: str, message: str) -> ErrorDetail:
    return ErrorDetail(path=f"$.atomic.{field}", keyword=keyword, message=message)


class EventBuilder:
    """Builds envelopes from tracker field mappings for one route's settings.

    ``strict`` refuses fields payload_data 1-0-4 does not define (its
    ``additionalProperties: false``); ``atomic_schema`` names the schema of
    non-``ue`` events.
    """

    __slots__ = ("_usual_shapes", "atomic_schema", "atomic_schema_parts", "strict")

    def __init__(self, *, atomic_schema: str = ATOMIC_SCHEMA, strict: bool = True) -> None:
        self.atomic_schema = atomic_schema
        self.atomic_schema_parts = schema_parts(atomic_schema)
        self.strict = strict
        self._usual_shapes: dict[tuple[str, ...], bool] = {}

    def build(self, fields: dict[str, Any], source: Source, now: datetime) -> Envelope:
        """One envelope for one tracker event whose values are all strings.

        Everything is gathered in locals and the envelope is made in one call at the end; errors are
        collected only when something is wrong.
        """
        keys = fields.keys()
        errors: list[ErrorDetail] | None = None
        # Set comparisons run in C; the detailed checks run only for events that fail them.
        atomic_ok = (FIELDS.issuperset(keys) or not self.strict) and keys >= _REQUIRED
        if not atomic_ok:
            errors = self._field_errors(fields)
        stamp = None
        for name in _TIMESTAMPS:
            value = fields.get(name)
            if value is not None:
                if value.isdigit() and value.isascii() and len(value) <= 15:
                    if stamp is None:
                        stamp = value
                else:
                    atomic_ok = False
                    errors = _add(errors, _error(
                        name, "timestamp", f"`{name}` must be epoch milliseconds, got {value[:40]!r}"
                    ))
        event_tstamp = None
        if stamp is not None:
            event_tstamp = _timestamp(stamp)
            if event_tstamp is None:
                atomic_ok = False
                errors = _add(errors, _error("dtm", "timestamp", f"{stamp} milliseconds is out of range for a date"))
        if not keys.isdisjoint(_OVERRIDES):
            source = _override(source, fields)
        contexts = None
        if not keys.isdisjoint(_CONTEXT_FIELDS):
            contexts, error = _contexts(fields)
            if error is not None:
                errors = _add(errors, error)
        kind = fields.get("e")
        schema: str | None = None
        parts: SchemaParts = NO_SCHEMA_PARTS
        payload: Any = fields
        if kind == "ue":
            unstruct, error = _unstruct(fields)
            if error is not None:
                errors = _add(errors, error)
            elif unstruct is not None:
                # The event's own schema is checked even when the atomic fields are wrong: more to fix at once.
                schema = unstruct.schema
                payload = unstruct.data
                parts = schema_parts(schema)
        elif kind in EVENT_TYPES:
            if atomic_ok:
                schema = self.atomic_schema
                parts = self.atomic_schema_parts
        elif kind is not None:
            known = ", ".join(EVENT_TYPES)
            errors = _add(errors, _error("e", "enum", f"unknown event type {kind[:40]!r}; expected one of {known}"))
        return Envelope(
            id=new_event_id(),
            collector_tstamp=now,
            source=source,
            protocol=PROTOCOL,
            payload=payload,
            schema=schema,
            schema_vendor=parts[0],
            schema_name=parts[1],
            schema_format=parts[2],
            schema_version=parts[3],
            event_tstamp=event_tstamp,
            contexts=contexts,
            atomic=fields,
            valid=errors is None,
            errors=errors,
        )

    def build_many(self, items: list[dict[str, Any]], source: Source, now: datetime) -> list[Envelope]:
        """Envelopes for the tracker events of one request, each an object of strings, in order.

        The result is what :meth:`build` gives for each item. The usual event (known fields, no tracker
        overrides, ``dtm``/``stm`` in epoch milliseconds, a base64 ``ue_px`` and ``cx`` that decode into
        their wrappers) is built inline, with no function call of its own; at the first surprise, before
        anything is changed, the item goes to :meth:`build`, which says what is wrong.
        """
        build = self.build
        usual = self._usual_shapes
        atomic_schema = self.atomic_schema
        atomic_parts = self.atomic_schema_parts
        a2b = _b64decode_padded
        seconds = _SECONDS
        milliseconds = _MILLISECONDS
        out: list[Envelope] = []
        append = out.append
        for fields, event_id in zip(items, new_event_ids(len(items)), strict=True):
            # The events of a tracker have a few shapes (field names in order), seen over and over: one
            # tuple and a dict read instead of three set comparisons.
            shape = tuple(fields)
            is_usual = usual.get(shape)
            if is_usual is None:
                is_usual = self._learn_shape(shape, fields)
            if not is_usual:
                append(build(fields, source, now))
                continue
            dtm = fields.get("dtm")
            stm = fields.get("stm")
            stamp = dtm if dtm is not None else stm
            event_tstamp = None
            if stamp is not None:
                if (
                    not (stamp.isdigit() and stamp.isascii() and len(stamp) <= 15)
                    or (stm is not None and not (stm.isdigit() and stm.isascii() and len(stm) <= 15))
                ):
                    append(build(fields, source, now))
                    continue
                second = seconds.get(stamp[:-3])  # None for fewer than 4 digits: never a key
                event_tstamp = second + milliseconds[stamp[-3:]] if second is not None else _timestamp(stamp)
                if event_tstamp is None:
                    append(build(fields, source, now))
                    continue
            contexts = None
            cx = fields.get("cx")
            if cx is not None:
                try:
                    raw = a2b(cx + _PAD[len(cx) & 3])
                    # More opening brackets than the nesting limit: build() checks the depth.
                    wrapper = (
                        _decode_contexts_unchecked(raw)
                        if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH
                        else None
                    )
                except (ValueError, msgspec.DecodeError):
                    wrapper = None
                if wrapper is None or not wrapper.schema.startswith(CONTEXTS_PREFIX):
                    append(build(fields, source, now))
                    continue
                contexts = wrapper.data
            kind = fields["e"]
            if kind == "ue":
                ue = fields.get("ue_px")
                if ue is None:
                    append(build(fields, source, now))
                    continue
                try:
                    raw = a2b(ue + _PAD[len(ue) & 3])
                    unstruct = (
                        _decode_unstruct_unchecked(raw)
                        if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH
                        else None
                    )
                except (ValueError, msgspec.DecodeError):
                    unstruct = None
                if unstruct is None or not unstruct.schema.startswith(UNSTRUCT_PREFIX):
                    append(build(fields, source, now))
                    continue
                inner = unstruct.data
                schema = inner.schema
                payload = inner.data
                parts = schema_parts(schema)
                del fields["ue_px"]
            elif kind in EVENT_TYPES:
                schema = atomic_schema
                parts = atomic_parts
                payload = fields
            else:
                append(build(fields, source, now))
                continue
            if contexts is not None:
                del fields["cx"]
            append(
                Envelope(
                    id=event_id,
                    collector_tstamp=now,
                    source=source,
                    protocol=PROTOCOL,
                    payload=payload,
                    schema=schema,
                    schema_vendor=parts[0],
                    schema_name=parts[1],
                    schema_format=parts[2],
                    schema_version=parts[3],
                    event_tstamp=event_tstamp,
                    contexts=contexts,
                    atomic=fields,
                )
            )
        return out

    def _learn_shape(self, shape: tuple[str, ...], fields: dict[str, Any]) -> bool:
        """Whether events of this shape may take the inline path of :meth:`build_many`, remembered."""
        keys = fields.keys()
        is_usual = (not self.strict or FIELDS.issuperset(keys)) and keys >= _REQUIRED and keys.isdisjoint(_UNUSUAL)
        if len(self._usual_shapes) >= _MAX_SHAPES:  # shapes come from clients: bound the cache
            self._usual_shapes.clear()
        self._usual_shapes[shape] = is_usual
        return is_usual

    def _field_errors(self, fields: dict[str, Any]) -> list[ErrorDetail] | None:
        keys = fields.keys()
        errors = []
        if self.strict:
            errors += [
                _error(name, "additionalProperties", f"`{name}` is not a tracker protocol field (payload_data 1-0-4)")
                for name in sorted(keys - FIELDS)
            ]
        errors += [
            _error(name, "required", f"the tracker field `{name}` is required") for name in sorted(_REQUIRED - keys)
        ]
        return errors or None

    def build_invalid(self, item: Any, source: Source, now: datetime, errors: list[ErrorDetail]) -> Envelope:
        """An envelope for a tp2 item that is not an object of strings; the item is kept as sent."""
        envelope = Envelope(id=new_event_id(), collector_tstamp=now, source=source, protocol=PROTOCOL)
        if isinstance(item, dict):
            envelope.atomic = item
        envelope.payload = item
        for error in errors:
            envelope.fail(error)
        return envelope


def _add(errors: list[ErrorDetail] | None, error: ErrorDetail) -> list[ErrorDetail]:
    if errors is None:
        return [error]
    errors.append(error)
    return errors


def _contexts(fields: dict[str, Any]) -> tuple[list[SelfDescribing] | None, ErrorDetail | None]:
    """The contexts in ``cx`` (base64) or ``co`` (JSON), removed from ``fields``; or the error, leaving it there."""
    name = "cx" if "cx" in fields else "co"
    text = fields[name]
    try:
        raw: bytes | str = decode_base64(text) if name == "cx" else text
    except ValueError as exc:
        return None, _error(name, "base64", f"`cx` is not base64: {exc}")
    try:
        wrapper = _decode_contexts(raw)
    except msgspec.ValidationError as exc:
        return None, _error(name, "contexts", f"`{name}` is not a contexts wrapper {{schema, data: [...]}}: {exc}")
    except msgspec.DecodeError as exc:
        return None, _error(name, "json", f"`{name}` does not hold JSON: {exc}")
    if not wrapper.schema.startswith(CONTEXTS_PREFIX):
        return None, _error(
            name, "contexts", f"`{name}` must be wrapped in {CONTEXTS_PREFIX}*, not {wrapper.schema[:200]!r}"
        )
    del fields[name]
    return wrapper.data, None


def _unstruct(fields: dict[str, Any]) -> tuple[SelfDescribing | None, ErrorDetail | None]:
    """The event in ``ue_px`` (base64) or ``ue_pr`` (JSON), removed from ``fields``; or the error, leaving it there."""
    name = "ue_px" if "ue_px" in fields else "ue_pr"
    text = fields.get(name)
    if text is None:
        return None, _error("ue_px", "required", "a `ue` event needs `ue_px` (base64) or `ue_pr` (JSON)")
    try:
        raw: bytes | str = decode_base64(text) if name == "ue_px" else text
    except ValueError as exc:
        return None, _error(name, "base64", f"`ue_px` is not base64: {exc}")
    try:
        wrapper = _decode_unstruct(raw)
    except msgspec.ValidationError as exc:
        return None, _error(
            name, "unstruct_event",
            f"`{name}` is not an unstruct_event wrapper {{schema, data: {{schema, data}}}}: {exc}",
        )
    except msgspec.DecodeError as exc:
        return None, _error(name, "json", f"`{name}` does not hold JSON: {exc}")
    if not wrapper.schema.startswith(UNSTRUCT_PREFIX):
        return None, _error(
            name, "unstruct_event", f"`{name}` must be wrapped in {UNSTRUCT_PREFIX}*, not {wrapper.schema[:200]!r}"
        )
    del fields[name]
    return wrapper.data, None


def _override(source: Source, fields: dict[str, Any]) -> Source:
    """A copy of the request's source with the tracker's ``ip``, ``ua`` and ``tnuid`` applied."""
    metadata = source.metadata
    tnuid = fields.get("tnuid")
    if tnuid is not None:
        metadata = {**(metadata or {}), NETWORK_USER_ID: tnuid}
    return Source(
        input=source.input,
        client_ip=fields.get("ip", source.client_ip),
        user_agent=fields.get("ua", source.user_agent),
        headers=source.headers,
        metadata=metadata,
    )
