"""The Snowplow tracker protocol over real HTTP: pixel GETs, tp2 POSTs, redirects, CORS, the identity cookie.

Each invalid case must land in the invalid sink with a precise error while the tracker still gets what a
Snowplow collector answers (the GIF, or ``200 ok``); only a body that is not payload_data gets 400.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from streamer.core.config import ConfigError
from streamer.core.envelope import Envelope, Source, utc_now
from streamer.core.registry import SchemaKey
from streamer.protocols.snowplow import PIXEL, EventBuilder
from streamer.protocols.snowplow.events import decode_base64
from tests.support import compile_text, http_port, need_service, read_jsonl, running

pytestmark = pytest.mark.anyio

TP2 = "/com.snowplowanalytics.snowplow/tp2"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
BUTTON = "iglu:com.example/button_click/jsonschema/1-0-0"
USER = "iglu:com.example/user/jsonschema/1-0-0"
ATOMIC = "iglu:io.streamer/snowplow_event/jsonschema/1-0-0"
REDIRECT = "iglu:com.snowplowanalytics.snowplow/uri_redirect/jsonschema/1-0-0"

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    cors: {allow_origins: ["https://www.example.com", "https://*.example.org"]}
    cookie: {name: sp, domain: example.com, max_age: 3600, same_site: Lax, secure: false}
    routes:
      - type: snowplow
        allow_unknown_fields: ${UNKNOWN_FIELDS:-false}
        redirect:
          enabled: ${REDIRECTS:-true}
          allow_hosts: [www.example.com, "*.example.org"]
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


class Collector:
    def __init__(self, client: httpx.AsyncClient, tmp_path: Path) -> None:
        self.client = client
        self.tmp_path = tmp_path

    def valid(self) -> list[dict[str, Any]]:
        return read_jsonl(self.tmp_path / "valid.jsonl")

    def invalid(self) -> list[dict[str, Any]]:
        return read_jsonl(self.tmp_path / "invalid.jsonl")

    async def tp2(self, *events: Any, **kwargs: Any) -> httpx.Response:
        return await self.client.post(TP2, json={"schema": PAYLOAD_DATA, "data": list(events)}, **kwargs)


@asynccontextmanager
async def collector(tmp_path: Path, **environ: str) -> AsyncIterator[Collector]:
    async with running(PIPELINE, tmp_path, environ) as pipeline:
        base = f"http://127.0.0.1:{http_port(pipeline)}"
        async with httpx.AsyncClient(base_url=base) as client:
            yield Collector(client, tmp_path)


def b64(document: Any, *, pad: bool = False, urlsafe: bool = True) -> str:
    raw = json.dumps(document).encode()
    text = (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()
    return text if pad else text.rstrip("=")


def ue(data: Any, schema: str = BUTTON) -> dict[str, Any]:
    return {"schema": UNSTRUCT, "data": {"schema": schema, "data": data}}


def cx(*contexts: tuple[str, Any]) -> dict[str, Any]:
    return {"schema": CONTEXTS, "data": [{"schema": s, "data": d} for s, d in contexts]}


def event(e: str = "pv", **fields: str) -> dict[str, str]:
    return {"e": e, "tv": "js-4.0.0", "p": "web", "aid": "shop", **fields}


def errors_of(envelope: dict[str, Any]) -> list[tuple[str, str]]:
    return [(error.get("path", "$"), error["keyword"]) for error in envelope["errors"]]


# Pixel GETs ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/i", "/com.snowplowanalytics.snowplow/i", "/ice.png"])
async def test_pixel_get_answers_the_gif_and_records_the_event(tmp_path: Path, path: str) -> None:
    async with collector(tmp_path) as c:
        response = await c.client.get(path, params=event("pv", url="https://www.example.com/a", dtm="1700000000000"))
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/gif"
        assert response.content == PIXEL and PIXEL.startswith(b"GIF89a") and len(PIXEL) == 43
    [envelope] = c.valid()
    assert envelope["protocol"] == "snowplow"
    assert envelope["schema"] == ATOMIC
    assert envelope["payload"] == envelope["atomic"]
    assert envelope["atomic"]["url"] == "https://www.example.com/a"
    assert envelope["event_tstamp"] == "2023-11-14T22:13:20Z"
    assert envelope["source"]["client_ip"] == "127.0.0.1"


async def test_pixel_get_with_a_bad_event_still_answers_the_gif(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        response = await c.client.get("/i", params={"e": "ue", "tv": "js", "p": "web", "ue_px": "%%%"})
        assert response.status_code == 200
        assert response.content == PIXEL
        empty = await c.client.get("/i")
        assert empty.status_code == 200
    bad, nothing = c.invalid()
    assert errors_of(bad) == [("$.atomic.ue_px", "base64")]
    assert bad["atomic"]["ue_px"] == "%%%"  # kept as sent
    assert sorted(errors_of(nothing)) == [("$.atomic.e", "required"), ("$.atomic.p", "required"),
                                          ("$.atomic.tv", "required")]


# tp2 POSTs ----------------------------------------------------------------------------------------------


async def test_tp2_every_event_type_and_decoding(tmp_path: Path) -> None:
    click = {"id": "buy", "position": 1}
    two_users = cx((USER, {"user_id": "u-1"}), (USER, {"user_id": "u-2", "plan": "pro"}))
    events = [
        event("pv", url="https://www.example.com/", page="Home", refr="https://ref.example/"),
        event("pp", pp_mix="0", pp_max="10", pp_miy="0", pp_may="400"),
        event("se", se_ca="shop", se_ac="add", se_la="sku", se_pr="x", se_va="2.5"),
        event("tr", tr_id="o-1", tr_tt="10.00", tr_cu="EUR"),
        event("ti", ti_id="o-1", ti_sk="sku", ti_pr="5.00", ti_qu="2"),
        event("ue", ue_px=b64(ue(click)), cx=b64(two_users)),  # URL-safe, unpadded (the JS tracker)
        event("ue", ue_px=b64(ue(click), pad=True), cx=b64(two_users, pad=True)),  # padded (the Python tracker)
        event("ue", ue_px=b64(ue({"id": "ü/?>"}), urlsafe=False, pad=True)),  # standard base64 with + and /
        event("ue", ue_pr=json.dumps(ue(click)), co=json.dumps(two_users)),  # plain JSON
    ]
    async with collector(tmp_path) as c:
        response = await c.tp2(*events)
        assert (response.status_code, response.text) == (200, "ok")
    assert c.invalid() == []
    valid = c.valid()
    assert [e["atomic"]["e"] for e in valid] == ["pv", "pp", "se", "tr", "ti", "ue", "ue", "ue", "ue"]
    assert len({e["id"] for e in valid}) == 9
    for envelope in valid[:5]:
        assert envelope["schema"] == ATOMIC
        assert envelope["payload"] == envelope["atomic"]
    assert valid[2]["payload"]["se_va"] == "2.5"
    for envelope in valid[5:]:
        assert envelope["schema"] == BUTTON
        assert envelope["schema_vendor"] == "com.example" and envelope["schema_name"] == "button_click"
        for decoded in ("ue_px", "ue_pr", "cx", "co"):
            assert decoded not in envelope["atomic"]
    assert valid[5]["payload"] == click
    assert valid[7]["payload"] == {"id": "ü/?>"}
    for envelope in (valid[5], valid[6], valid[8]):
        # Two contexts with the same schema both survive, in order.
        assert envelope["contexts"] == [
            {"schema": USER, "data": {"user_id": "u-1"}},
            {"schema": USER, "data": {"user_id": "u-2", "plan": "pro"}},
        ]


async def test_tp2_invalid_events_get_precise_errors_and_the_tracker_gets_200(tmp_path: Path) -> None:
    good = b64(ue({"id": "ok"}))
    cases: list[tuple[Any, list[tuple[str, str]]]] = [
        (event("ue", ue_px="not base64!"), [("$.atomic.ue_px", "base64")]),
        (event("ue", ue_px=base64.urlsafe_b64encode(b"{not json").decode()), [("$.atomic.ue_px", "json")]),
        (event("ue", ue_px=b64({"schema": CONTEXTS, "data": {"schema": BUTTON, "data": {}}})),
         [("$.atomic.ue_px", "unstruct_event")]),
        (event("ue", ue_px=b64({"schema": UNSTRUCT, "data": {"data": {}}})), [("$.atomic.ue_px", "unstruct_event")]),
        (event("ue"), [("$.atomic.ue_px", "required")]),
        (event("ue", ue_px=b64(ue({"id": 5}))), [("$.id", "type")]),
        (event("ue", ue_px=good, cx=b64(cx((USER, {"user_id": "u"}), (USER, {"plan": "gold"})))),
         [("$.contexts[1].data", "required"), ("$.contexts[1].data.plan", "enum")]),
        (event("pv", cx=b64(cx((USER, {"user_id": "u"}), ("iglu:com.example/nope/jsonschema/1-0-0", {})))),
         [("$.contexts[1]", "schema_not_found")]),
        (event("pv", cx="@@"), [("$.atomic.cx", "base64")]),
        (event("pv", cx=b64({"schema": CONTEXTS, "data": {"not": "a list"}})), [("$.atomic.cx", "contexts")]),
        (event("zz"), [("$.atomic.e", "enum")]),
        ({"e": "pv", "p": "web"}, [("$.atomic.tv", "required")]),
        (event("pv", colour="red"), [("$.atomic.colour", "additionalProperties")]),
        (event("pv", dtm="yesterday"), [("$.atomic.dtm", "timestamp")]),
        ({**event("se"), "se_va": 2.5}, [("$.atomic.se_va", "type")]),
        ("just a string", [("$", "type")]),
    ]
    async with collector(tmp_path) as c:
        response = await c.tp2(event("pv"), *(case for case, _ in cases))
        assert (response.status_code, response.text) == (200, "ok")
    assert len(c.valid()) == 1
    invalid = c.invalid()
    assert len(invalid) == len(cases)
    for envelope, (case, expected) in zip(invalid, cases, strict=True):
        assert envelope["valid"] is False
        assert sorted(errors_of(envelope)) == sorted(expected), (case, envelope["errors"])
        assert all(error["message"] for error in envelope["errors"])
    unknown_type = invalid[10]
    assert "unknown event type 'zz'" in unknown_type["errors"][0]["message"]
    bad_context = invalid[6]
    assert bad_context["schema"] == BUTTON and bad_context["payload"] == {"id": "ok"}
    assert {error["schema"] for error in bad_context["errors"]} == {USER}
    assert invalid[-1]["payload"] == "just a string"
    assert invalid[-2]["atomic"]["se_va"] == 2.5  # kept as sent


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "empty_body"),
        (b"{not json", "bad_json"),
        (b'[{"e": "pv"}]', "not_payload_data"),
        (json.dumps({"schema": "iglu:com.acme/other/jsonschema/1-0-0", "data": [{}]}).encode(), "not_payload_data"),
        (json.dumps({"schema": PAYLOAD_DATA, "data": {"e": "pv"}}).encode(), "not_payload_data"),
        (json.dumps({"schema": PAYLOAD_DATA, "data": []}).encode(), "empty_batch"),
    ],
)
async def test_tp2_body_that_is_not_payload_data_gets_400(tmp_path: Path, body: bytes, error: str) -> None:
    async with collector(tmp_path) as c:
        response = await c.client.post(TP2, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == error
    assert response.json()["message"]
    assert c.valid() == [] and c.invalid() == []


async def test_tracker_overrides_ip_ua_and_tnuid(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        await c.tp2(
            event("pv"),
            event("pv", ip="203.0.113.9", ua="Custom/1.0", tnuid="tracker-nuid"),
            headers={"user-agent": "Agent/2.0", "cookie": "sp=cookie-nuid"},
        )
    plain, overridden = c.valid()
    assert plain["source"]["client_ip"] == "127.0.0.1"
    assert plain["source"]["user_agent"] == "Agent/2.0"
    assert plain["source"]["metadata"] == {"network_user_id": "cookie-nuid"}
    assert overridden["source"]["client_ip"] == "203.0.113.9"
    assert overridden["source"]["user_agent"] == "Custom/1.0"
    assert overridden["source"]["metadata"] == {"network_user_id": "tracker-nuid"}
    assert "cookie" not in plain["source"]["headers"]


async def test_unknown_fields_can_be_allowed(tmp_path: Path) -> None:
    async with collector(tmp_path, UNKNOWN_FIELDS="true") as c:
        await c.tp2(event("pv", cb="12345"))
    [envelope] = c.valid()
    assert envelope["atomic"]["cb"] == "12345"


def test_base64_variants_decode_alike() -> None:
    raw = b'{"a":"\xc3\xbc?>~"}'
    for text in (
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
    ):
        assert decode_base64(text) == raw
    for bad in ("a", "ab!c", "é", "YW Jj", "YW==Jj", "YWJj\n"):
        with pytest.raises(ValueError):
            decode_base64(bad)


def test_simd_base64_agrees_with_the_standard_library() -> None:
    """The `fast` extra's pybase64 decodes what the stdlib fallback does, and refuses only what it refuses or a
    mix of both alphabets (which the fallback then takes)."""
    try:
        import pybase64  # noqa: F401
    except ImportError:
        need_service(False, "pybase64", "it comes with the `fast` extra: pip install 'streamer[fast]'")
    from streamer.protocols.snowplow import events

    refused = ValueError
    # text: (the stdlib fallback's answer, pybase64's answer)
    samples: dict[str, tuple[bytes | type[ValueError], bytes | type[ValueError]]] = {
        "": (b"", b""),
        "YQ": (b"a", b"a"),
        "YWI": (b"ab", b"ab"),
        "YWJj": (b"abc", b"abc"),
        "-_-_": (b"\xfb\xff\xbf", b"\xfb\xff\xbf"),
        "+/+/": (b"\xfb\xff\xbf", b"\xfb\xff\xbf"),
        "-/+_": (b"\xfb\xff\xbf", refused),  # a mix of both alphabets: the fallback takes it
        "YW Jj": (refused, refused),
        "YW==Jj==": (refused, refused),
        "YQ=": (b"a", b"a"),
        "é": (refused, refused),
        "YQ\x00=": (refused, refused),
        "ab!c": (refused, refused),
    }
    for text, (stdlib, simd) in samples.items():
        padded = text + events._PAD[len(text) & 3]
        for decode, expected in ((events._decode_base64_stdlib, stdlib), (events._b64decode_padded, simd)):
            try:
                got: bytes | type[ValueError] = decode(padded)
            except ValueError:
                got = ValueError
            assert got == expected, (text, decode)


def test_build_many_gives_what_build_gives() -> None:
    """tp2 bodies go through ``build_many``, whose inline path must match ``build`` for every kind of event."""
    good, user = b64(ue({"id": "ok"})), b64(cx((USER, {"user_id": "u"})))
    cases: list[dict[str, str]] = [
        event("ue", ue_px=good, cx=user, dtm="1700000000000", stm="1700000000500"),
        event("ue", ue_px=b64(ue({"id": "ü"}), urlsafe=False, pad=True), stm="1700000000500"),
        event("pv", cx=user, url="https://www.example.com/"),
        event("se", se_ca="shop", se_ac="add"),
        event("ue", ue_px="not base64!", cx=user),
        event("ue", ue_px=good, cx="@@"),
        event("ue", ue_px=b64({"schema": CONTEXTS, "data": {"schema": BUTTON, "data": {}}})),
        event("ue", ue_px=good, cx=b64({"schema": UNSTRUCT, "data": []})),
        event("ue"),
        event("ue", ue_pr=json.dumps(ue({"id": "pr"}))),
        event("ue", ue_px=good, ue_pr=json.dumps(ue({"id": "pr"}))),
        event("pv", co=json.dumps(cx((USER, {"user_id": "co"})))),
        event("zz", cx=user),
        {"e": "pv", "p": "web"},
        event("pv", colour="red"),
        event("pv", dtm="yesterday", stm="1700000000500"),
        event("pv", dtm="1700000000000", stm="later"),
        event("pv", dtm="999999999999999"),
        event("pv", dtm="253402300799999"),  # the last millisecond a datetime holds
        event("pv", dtm="253402300800000"),  # one past it
        event("pv", dtm="7"),
        event("pv", ttm="1600000000000", dtm="1700000000000"),
        event("pv", ip="203.0.113.9", ua="Custom/1.0", tnuid="nuid"),
    ]
    source = Source(input="web", client_ip="127.0.0.1", headers={"user-agent": "test"})
    now = utc_now()

    def plain(envelope: Envelope) -> dict[str, Any]:
        document: dict[str, Any] = msgspec.to_builtins(envelope)
        assert uuid.UUID(document.pop("id")).version == 4
        return document

    for builder in (EventBuilder(), EventBuilder(strict=False)):
        batch = builder.build_many([dict(case) for case in cases], source, now)
        one_by_one = [builder.build(dict(case), source, now) for case in cases]
        assert [plain(e) for e in batch] == [plain(e) for e in one_by_one]
        assert batch[0].valid and batch[0].schema == BUTTON and batch[0].contexts is not None
        assert "ue_px" not in (batch[0].atomic or {}) and "cx" not in (batch[0].atomic or {})
        assert [e.valid for e in batch[4:9]] == [False] * 5


def test_event_times_are_exact_to_the_millisecond() -> None:
    builder, source, now = EventBuilder(), Source(input="web"), utc_now()
    stamps = ["1700000000123", "1700000000999", "1700000001000", "7", "253402300799999", "253402300800000"]
    for _ in range(2):  # the second time, from the cache of seconds
        batch = builder.build_many([event("pv", dtm=stamp) for stamp in stamps], source, now)
        assert [e.event_tstamp for e in batch] == [
            datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=UTC),
            datetime(2023, 11, 14, 22, 13, 20, 999000, tzinfo=UTC),
            datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC),
            datetime(1970, 1, 1, 0, 0, 0, 7000, tzinfo=UTC),
            datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
            None,
        ]
        assert batch[-1].errors is not None and batch[-1].errors[0].keyword == "timestamp"


# Redirects ----------------------------------------------------------------------------------------------


async def test_redirect_records_a_uri_redirect_event_and_redirects(tmp_path: Path) -> None:
    target = "https://shop.example.org/item?id=1&x=%20y"
    async with collector(tmp_path) as c:
        response = await c.client.get("/r/tp2", params={"u": target, "aid": "mail"})
        assert response.status_code == 302
        assert response.headers["location"] == target
        tracked = await c.client.get("/r/tp2", params={**event("se", se_ca="mail", se_ac="click"),
                                                       "u": "https://www.example.com/"})
        assert tracked.status_code == 302
    bare, with_event = c.valid()
    assert bare["schema"] == REDIRECT
    assert bare["payload"] == {"uri": target}
    assert bare["atomic"]["aid"] == "mail" and bare["atomic"]["e"] == "ue"
    assert with_event["schema"] == ATOMIC
    assert with_event["contexts"] == [{"schema": REDIRECT, "data": {"uri": "https://www.example.com/"}}]


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example.net/",
        "https://example.org.evil.net/",
        "javascript:alert(1)",
        "//www.example.com/",
        "https://www.example.com/\r\nset-cookie: x=1",
        "https://www.example.com\\@evil.net/",
    ],
)
async def test_redirect_refuses_hosts_not_allowed(tmp_path: Path, target: str) -> None:
    async with collector(tmp_path) as c:
        response = await c.client.get("/r/tp2", params={"u": target})
    assert response.status_code == 400
    assert response.json()["error"] == "redirect_not_allowed"
    assert "x=1" not in response.headers.get("set-cookie", "")
    assert c.valid() == [] and c.invalid() == []


async def test_redirect_is_off_unless_enabled(tmp_path: Path) -> None:
    async with collector(tmp_path, REDIRECTS="false") as c:
        response = await c.client.get("/r/tp2", params={"u": "https://www.example.com/"})
        missing = await c.client.get("/r/tp2")
    assert response.status_code == 404
    assert response.json()["error"] == "redirect_disabled"
    assert missing.status_code == 404


def test_enabled_redirect_needs_allowed_hosts() -> None:
    text = """
inputs:
  web:
    type: http
    routes:
      - type: snowplow
        redirect: {enabled: true}
sinks:
  out: {type: stdout}
"""
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    message = str(caught.value)
    assert "test.yml:7:" in message and "allow_hosts" in message and "open redirects" in message
    with pytest.raises(ConfigError) as caught:
        compile_text(text.replace("redirect: {enabled: true}", "atomic_schema: iglu:com.acme/x"))
    assert "test.yml:7:" in str(caught.value) and "atomic_schema" in str(caught.value)


# CORS ---------------------------------------------------------------------------------------------------


async def test_cors_preflight_echoes_the_allowed_origin(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        preflight = await c.client.options(
            TP2,
            headers={
                "origin": "https://shop.example.org",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example.org"
        assert preflight.headers["access-control-allow-credentials"] == "true"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type"
        assert "set-cookie" not in preflight.headers
        post = await c.tp2(event(), headers={"origin": "https://www.example.com"})
        assert post.headers["access-control-allow-origin"] == "https://www.example.com"
        assert post.headers["access-control-allow-credentials"] == "true"
        assert post.headers["vary"] == "Origin"
        pixel = await c.client.get("/i", params=event(), headers={"origin": "https://www.example.com"})
        assert pixel.headers["access-control-allow-origin"] == "https://www.example.com"


async def test_cors_refuses_other_origins(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        refused = await c.client.options(
            TP2, headers={"origin": "https://evil.example.net", "access-control-request-method": "POST"}
        )
        assert refused.status_code == 403
        assert refused.json()["error"] == "origin_not_allowed"
        bad_header = await c.client.options(
            TP2,
            headers={
                "origin": "https://www.example.com",
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-secret",
            },
        )
        assert bad_header.status_code == 403 and "x-secret" in bad_header.json()["message"]
        # Served (CORS is not authentication), but without the headers a browser needs to read the answer.
        post = await c.tp2(event(), headers={"origin": "https://evil.example.net"})
        assert post.status_code == 200
        assert "access-control-allow-origin" not in post.headers


async def test_without_cors_options_is_not_allowed(tmp_path: Path) -> None:
    text = PIPELINE.replace('    cors: {allow_origins: ["https://www.example.com", "https://*.example.org"]}\n', "")
    async with running(text, tmp_path) as pipeline:
        url = f"http://127.0.0.1:{http_port(pipeline)}{TP2}"
        async with httpx.AsyncClient() as client:
            response = await client.options(url, headers={"origin": "https://www.example.com"})
    assert response.status_code == 405


# The identity cookie ------------------------------------------------------------------------------------


async def test_identity_cookie_is_minted_kept_and_recorded(tmp_path: Path) -> None:
    async with collector(tmp_path) as c:
        first = await c.client.get("/i", params=event())
        set_cookie = first.headers["set-cookie"]
        name_value, *attributes = [part.strip() for part in set_cookie.split(";")]
        minted = name_value.removeprefix("sp=")
        assert attributes == ["Max-Age=3600", "Path=/", "Domain=example.com", "SameSite=Lax", "HttpOnly"]
        again = await c.tp2(event(), headers={"cookie": f"other=1; sp={minted}"})
        assert again.headers["set-cookie"].startswith(f"sp={minted};")  # refreshed, same id
        anonymous = await c.tp2(event(), headers={"sp-anonymous": "*"})
        assert "set-cookie" not in anonymous.headers
        health = await c.client.get("/health")
        assert "set-cookie" not in health.headers
    recorded = [e["source"].get("metadata") for e in c.valid()]
    assert recorded == [{"network_user_id": minted}, {"network_user_id": minted}, None]


def test_same_site_none_cookie_is_always_secure() -> None:
    from streamer.http.cookie import CookieSpec, IdentityCookie
    from streamer.http.messages import Request

    cookie = IdentityCookie(CookieSpec(same_site="None", secure=False))
    request = Request("GET", "/i", "", {}, b"", ("127.0.0.1", 1))
    header = cookie.ensure(request)
    assert header is not None and "SameSite=None; Secure" in header
    assert request.headers["cookie"].startswith("sp=")


@pytest.mark.anyio
async def test_atomic_schema_is_built_in() -> None:
    from streamer.protocols.snowplow.schema import atomic_schema_document
    from streamer.registry.builtin import BuiltinRepository

    served = await BuiltinRepository().fetch(SchemaKey.parse(ATOMIC))
    assert served is not None
    assert json.loads(served) == atomic_schema_document()
