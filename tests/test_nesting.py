"""The JSON nesting limit (streamer.core.nesting): one number for every decoder, answered as bad JSON.

A request body nesting deeper than MAX_JSON_DEPTH gets 400 bad_json on every route and backend (it
used to raise RecursionError in the decoder: 500 and a traceback); the same depth inside one tracker
event (ue_pr, co, ue_px, cx) makes that event invalid while the others go through; a file line is
kept as an invalid envelope. Whatever passes can be validated (jsonschema-rs), encoded and replayed.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.core.envelope import Envelope, Source, utc_now
from streamer.core.nesting import ENVELOPE_WRAPPING, MAX_JSON_DEPTH, TooDeep, depth_limited, json_depth
from tests.support import http_port, read_jsonl, run_to_end, running

LIMIT = MAX_JSON_DEPTH
PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
BUTTON = "iglu:com.example/button_click/jsonschema/1-0-0"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
TOO_DEEP = f"arrays and objects nest more than {LIMIT} levels deep; streamer accepts at most {LIMIT}"
BAD_JSON = {"error": "bad_json", "message": f"the body is not valid JSON: {TOO_DEEP}"}

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    routes:
      - {type: self_describing, path: /events}
      - {type: snowplow}
      - {type: webhook}
      - {type: cloudevents, path: /ce}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


def nested(depth: int, leaf: Any = "x") -> Any:
    """A value whose arrays and objects nest exactly ``depth`` levels, alternating the two."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def reference_depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


def thousand_deep() -> bytes:
    """The body of the report: about 2 KB of "[" nesting a thousand levels."""
    return b"[" * 1000 + b"]" * 1000


# The scan ------------------------------------------------------------------------------------------------

tricky_text = st.text(alphabet='[]{}"\\ab:,\u00e9\U0001f600', max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(tricky_text, children, max_size=3),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(json_values, st.sampled_from(["msgspec", "ascii", "utf-8", "indented"]))
def test_json_depth_is_exact_for_every_valid_document(value: Any, encoding: str) -> None:
    if encoding == "msgspec":
        document: bytes | str = msgspec.json.encode(value)
    elif encoding == "ascii":
        document = json.dumps(value)
    elif encoding == "utf-8":
        document = json.dumps(value, ensure_ascii=False).encode()
    else:
        document = json.dumps(value, indent=1)
    assert json_depth(document) == reference_depth(value)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(json_values, st.data())
def test_json_depth_of_a_truncated_document_is_never_below_what_a_parser_reaches(value: Any, data: Any) -> None:
    document = msgspec.json.encode(nested(3, value))
    cut = data.draw(st.integers(0, len(document)))
    prefix = document[:cut]
    # The depth the parser is at when the prefix ends: unclosed brackets outside strings.
    depth, in_string, escaped = 0, False, False
    deepest = 0
    for byte in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    assert json_depth(prefix) >= deepest


def test_the_limit_is_exact_and_brackets_in_strings_do_not_count() -> None:
    decode = depth_limited(msgspec.json.Decoder().decode)
    assert decode(msgspec.json.encode(nested(LIMIT))) == nested(LIMIT)
    with pytest.raises(TooDeep) as caught:
        decode(msgspec.json.encode(nested(LIMIT + 1)))
    assert str(caught.value) == TOO_DEEP
    assert isinstance(caught.value, msgspec.DecodeError)  # every `except msgspec.DecodeError` answers it
    many_brackets = ["[[[{{{"] * 100 + [nested(10)] * 50  # far more brackets than the limit, 11 deep
    assert decode(json.dumps(many_brackets)) == many_brackets
    with pytest.raises(TooDeep):
        decode(thousand_deep())
    with pytest.raises(TooDeep):
        decode(b"[" * 100_000)  # truncated, deep: refused before msgspec recurses
    assert decode(json.dumps(nested(LIMIT)).encode().decode()) == nested(LIMIT)  # str documents too


def test_a_recursion_error_below_the_limit_is_reported_as_too_deep() -> None:
    # A limit above Python's: the scan lets the document through and msgspec runs out of stack.
    decode = depth_limited(msgspec.json.Decoder().decode, limit=100_000)
    with pytest.raises(TooDeep) as caught:
        decode(b"[" * (sys.getrecursionlimit() + 10) + b"]" * (sys.getrecursionlimit() + 10))
    assert caught.value.limit == 100_000


def test_what_passes_can_be_validated_encoded_and_replayed() -> None:
    # The deepest value an envelope can hold: a received document at the limit, wrapped by the envelope.
    deepest = nested(LIMIT + ENVELOPE_WRAPPING)
    for schema in ({"type": "object", "required": ["url"]}, {"items": {"$ref": "#"}, "type": "string"}):
        validator = jsonschema_rs.validator_for(schema)
        assert validator.is_valid(deepest) is False
        assert [e.message for e in validator.iter_errors(deepest)]  # no "Recursion limit reached"
    envelope = Envelope(
        id="e1", collector_tstamp=utc_now(), source=Source(input="web"), protocol="webhook", payload=deepest
    )
    line = msgspec.json.encode({"dead_letter": {"reason": "x"}, "envelope": envelope})
    assert msgspec.json.decode(line)["envelope"]["payload"] == deepest


# Over HTTP, both backends ----------------------------------------------------------------------------------


def tp2_body(*events: dict[str, str]) -> bytes:
    return msgspec.json.encode({"schema": PAYLOAD_DATA, "data": list(events)})


def tracker_event(**fields: str) -> dict[str, str]:
    return {"e": "pv", "tv": "js-4.0.0", "p": "web", "aid": "shop", **fields}


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


DEEP_BODIES: list[tuple[str, str, dict[str, str], bytes]] = [
    ("self_describing", "/events", {"content-type": "application/json"}, thousand_deep()),
    ("self_describing object", "/events", {"content-type": "application/json"},
     b'{"schema": "' + PAGE_VIEW.encode() + b'", "data": ' + thousand_deep() + b"}"),
    ("tp2", TP2, {"content-type": "application/json"},
     b'{"schema": "' + PAYLOAD_DATA.encode() + b'", "data": ' + thousand_deep() + b"}"),
    ("webhook", "/webhook", {"content-type": "application/json"}, thousand_deep()),
    ("cloudevents structured", "/ce", {"content-type": "application/cloudevents+json"},
     b'{"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": ' + thousand_deep() + b"}"),
    ("cloudevents batch", "/ce", {"content-type": "application/cloudevents-batch+json"}, thousand_deep()),
    ("cloudevents binary json", "/ce",
     {"content-type": "application/json", "ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
     thousand_deep()),
    ("cloudevents binary, no content type", "/ce",
     {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}, thousand_deep()),
    ("just past the limit", "/webhook", {"content-type": "application/json"},
     msgspec.json.encode(nested(LIMIT + 1))),
]


@pytest.mark.anyio
async def test_deep_bodies_get_400_bad_json_on_every_route(tmp_path: Path) -> None:
    async with running(PIPELINE, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient(base_url=base) as client:
            for name, path, headers, body in DEEP_BODIES:
                response = await client.post(path, headers=headers, content=body)
                assert (response.status_code, response.json()) == (400, BAD_JSON), name
            health = await client.get("/health")
    assert health.status_code == 200
    assert read_jsonl(tmp_path / "valid.jsonl") == read_jsonl(tmp_path / "invalid.jsonl") == []


@pytest.mark.anyio
async def test_bodies_at_the_limit_are_taken_validated_and_written(tmp_path: Path) -> None:
    at_limit = nested(LIMIT - 1)  # in a body one level deeper: LIMIT deep
    async with running(PIPELINE, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient(base_url=base) as client:
            hook = await client.post("/webhook", json={"deep": at_limit})
            # Invalid against page_view, nested LIMIT - 1 deep: jsonschema-rs reports its errors.
            event = await client.post("/events", json={"schema": PAGE_VIEW, "data": nested(LIMIT - 1)})
            structured = await client.post(
                "/ce",
                headers={"content-type": "application/cloudevents+json"},
                content=json.dumps({"specversion": "1.0", "id": "1", "source": "/s", "type": "t", "data": at_limit}),
            )
    assert (hook.status_code, hook.json()) == (200, {"received": 1, "invalid": 0})
    assert (event.status_code, event.json()) == (200, {"received": 1, "invalid": 1})
    assert (structured.status_code, structured.json()) == (200, {"received": 1, "invalid": 0})
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"] for e in valid] == [{"deep": at_limit}, at_limit]
    [invalid] = read_jsonl(tmp_path / "invalid.jsonl")
    assert invalid["payload"] == nested(LIMIT - 1)
    assert [(e["path"], e["keyword"]) for e in invalid["errors"]] == [("$", "additionalProperties"), ("$", "required")]


@pytest.mark.anyio
async def test_a_deep_piece_of_one_tracker_event_makes_that_event_invalid_and_the_others_go_through(
    tmp_path: Path,
) -> None:
    deep = thousand_deep()
    good = tracker_event(url="https://example.com/", dtm="1700000000000")
    pieces = {
        "ue_pr": tracker_event(e="ue", ue_pr=deep.decode()),
        "ue_px": tracker_event(e="ue", ue_px=b64(deep)),
        "co": tracker_event(co=deep.decode()),
        "cx": tracker_event(cx=b64(deep)),
    }
    async with running(PIPELINE, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient(base_url=base) as client:
            post = await client.post(TP2, content=tp2_body(good, *pieces.values(), good))
            pixel = await client.get("/i", params=tracker_event(e="ue", ue_pr=deep.decode()))
    assert (post.status_code, post.text) == (200, "ok")
    assert (pixel.status_code, pixel.headers["content-type"]) == (200, "image/gif")
    assert [e["atomic"]["url"] for e in read_jsonl(tmp_path / "valid.jsonl")] == ["https://example.com/"] * 2
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["errors"] for e in invalid] == [
        *[
            [{
                "path": f"$.atomic.{name}", "keyword": "json", "schema": None,
                "message": f"`{name}` does not hold JSON: {TOO_DEEP}",
            }]
            for name in pieces
        ],
        [{
            "path": "$.atomic.ue_pr", "keyword": "json", "schema": None,
            "message": f"`ue_pr` does not hold JSON: {TOO_DEEP}",
        }],
    ]
    assert [e["atomic"][name] for e, name in zip(invalid, [*pieces, "ue_pr"], strict=True)] == [
        deep.decode(), b64(deep), deep.decode(), b64(deep), deep.decode(),
    ]  # kept as sent


@pytest.mark.anyio
async def test_tracker_pieces_at_the_limit_are_decoded(tmp_path: Path) -> None:
    # More opening brackets than the limit (the fast path's gate) but only LIMIT deep: still taken.
    def wide(depth: int) -> list[Any]:
        return [nested(depth - 1), *[[{}]] * LIMIT]

    contexts = {"schema": CONTEXTS, "data": [{"schema": BUTTON, "data": {"deep": wide(LIMIT - 4)}}]}
    unstruct = {"schema": UNSTRUCT, "data": {"schema": BUTTON, "data": {"id": "b", "extra": wide(LIMIT - 3)}}}
    for piece in (contexts, unstruct):
        document = msgspec.json.encode(piece)
        assert (json_depth(document), document.count(b"[") + document.count(b"{") > LIMIT) == (LIMIT, True)
    async with running(PIPELINE, tmp_path) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient(base_url=base) as client:
            ue_px, cx = b64(msgspec.json.encode(unstruct)), b64(msgspec.json.encode(contexts))
            post = await client.post(TP2, content=tp2_body(tracker_event(e="ue", ue_px=ue_px, cx=cx)))
    assert (post.status_code, post.text) == (200, "ok")
    [envelope] = read_jsonl(tmp_path / "invalid.jsonl")  # button_click refuses the extra fields
    assert envelope["payload"] == unstruct["data"]["data"]  # type: ignore[index]
    assert envelope["contexts"] == contexts["data"]
    assert {e["keyword"] for e in envelope["errors"]} == {"additionalProperties", "required"}


@pytest.mark.anyio
async def test_a_deep_file_line_becomes_an_invalid_envelope_and_a_written_envelope_replays(tmp_path: Path) -> None:
    written = {
        "id": "00000000-0000-4000-8000-000000000001",
        "collector_tstamp": "2026-01-01T00:00:00Z",
        "source": {"input": "web", "metadata": {"cloudevents": {"ext": nested(LIMIT - 1)}}},
        "protocol": "cloudevents",
        "payload": nested(LIMIT - 1),
    }
    lines = [
        json.dumps({"schema": PAGE_VIEW, "data": {"url": "https://example.com/"}}),
        thousand_deep().decode(),
        json.dumps({"dead_letter": {"reason": "x"}, "envelope": written}),
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    await run_to_end(
        """
inputs:
  lines: {type: file, path: in.jsonl}
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  all: {type: file, path: all.jsonl, route: all}
""",
        tmp_path,
    )
    first, deep, replayed = read_jsonl(tmp_path / "all.jsonl")
    assert first["valid"] is True
    assert deep["payload"] == thousand_deep().decode()
    limit = LIMIT + ENVELOPE_WRAPPING
    assert deep["errors"] == [
        {
            "path": "$",
            "keyword": "decode",
            "schema": None,
            "message": f"not valid JSON: arrays and objects nest more than {limit} levels deep; "
            f"streamer accepts at most {limit}",
        }
    ]
    assert replayed["id"] == written["id"]
    assert replayed["payload"] == nested(LIMIT - 1)
    assert replayed["source"]["metadata"]["cloudevents"]["ext"] == nested(LIMIT - 1)
