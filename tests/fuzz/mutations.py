"""Valid requests for every route type, and the mutations that turn them hostile.

A case is a seed request (by index) and a few mutations, each a name and an integer that seeds its
choices: hypothesis draws small integers, the bulky content (a 60 KB string, a gzip bomb) is made
from them here, so examples stay small and replayable, and shrinking means fewer and simpler
mutations.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import random
import zlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from tests.fuzz.wire import Request

PAGE_VIEW = "iglu:com.example/page_view/jsonschema/1-0-0"
BUTTON = "iglu:com.example/button_click/jsonschema/1-0-0"
USER = "iglu:com.example/user/jsonschema/1-0-0"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
UNSTRUCT = "iglu:com.snowplowanalytics.snowplow/unstruct_event/jsonschema/1-0-0"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
TP2 = "/com.snowplowanalytics.snowplow/tp2"
HOOK_SECRET = "fuzz-signing-key"
PURGE_TOKEN = "fuzz-purge-token"
MAX_BODY = 65_536
"""The fuzz pipeline's max_body_bytes (small, so that "too large" is cheap to reach)."""

ROUTES = ["self_describing", "snowplow_get", "tp2", "redirect", "cloudevents", "webhook", "pixel", "schemas"]


def _b64(document: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).decode().rstrip("=")


def _headers(*extra: tuple[str, str]) -> list[tuple[str, str]]:
    return [("host", "127.0.0.1"), ("user-agent", "fuzz/1"), *extra, ("connection", "close")]


def _json_post(path: str, doc: Any, content_type: str = "application/json", *extra: tuple[str, str]) -> Request:
    request = Request("POST", path, headers=_headers(("content-type", content_type), *extra), doc=doc)
    request.body = json.dumps(doc).encode()
    return request


def _get(path: str, params: dict[str, Any]) -> Request:
    request = Request("GET", path, headers=_headers(), doc=params, doc_is_query=True)
    request.query = _query(params)
    return request


def _query(params: dict[str, Any]) -> str:
    return urlencode({k: v if isinstance(v, str) else _dumps(v) for k, v in params.items()})


def tracker_event(marker: str, **fields: str) -> dict[str, str]:
    return {"e": "pv", "tv": "js-4.0.0", "p": "web", "aid": "fuzz", "url": marker, "dtm": "1700000000000", **fields}


def ue_fields(marker: str) -> dict[str, str]:
    return tracker_event(
        marker,
        e="ue",
        ue_px=_b64({"schema": UNSTRUCT, "data": {"schema": BUTTON, "data": {"id": "buy", "label": marker}}}),
        cx=_b64({"schema": CONTEXTS, "data": [{"schema": USER, "data": {"user_id": "u1"}}]}),
    )


def signed(request: Request) -> Request:
    """The named webhook's HMAC header, computed over the body as it is now."""
    import hashlib
    import hmac

    digest = hmac.new(HOOK_SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    request.set_header("x-signature", "sha256=" + digest)
    return request


def seeds(route: str, marker: str) -> list[Request]:
    """Well-formed requests for ``route``; every event in them carries ``marker``."""
    if route == "self_describing":
        return [
            _json_post("/events", {"schema": PAGE_VIEW, "data": {"url": marker, "title": "t"}}),
            _json_post("/events", [
                {"schema": PAGE_VIEW, "data": {"url": marker}},
                {"schema": BUTTON, "data": {"id": "b", "label": marker},
                 "contexts": [{"schema": USER, "data": {"user_id": "u1"}}]},
            ]),
        ]
    if route == "snowplow_get":
        return [_get("/i", tracker_event(marker)), _get("/com.snowplowanalytics.snowplow/i", ue_fields(marker)),
                _get("/ice.png", tracker_event(marker, e="ue", ue_pr=json.dumps(
                    {"schema": UNSTRUCT, "data": {"schema": BUTTON, "data": {"id": "x", "label": marker}}})))]
    if route == "tp2":
        co = json.dumps({"schema": CONTEXTS, "data": [{"schema": USER, "data": {"user_id": "u2"}}]})
        return [
            _json_post(TP2, {"schema": PAYLOAD_DATA, "data": [ue_fields(marker), tracker_event(marker, co=co)]}),
            _json_post(TP2, {"schema": PAYLOAD_DATA, "data": [tracker_event(marker, e="se", se_ca="c", se_ac="a")]},
                       "application/json; charset=UTF-8"),
        ]
    if route == "redirect":
        return [_get("/r/tp2", {"u": "https://www.example.com/landing", "url": marker}),
                _get("/r/tp2", {"u": "https://www.example.com/x", **tracker_event(marker)})]
    if route == "cloudevents":
        attributes = {"specversion": "1.0", "id": "ce-1", "source": "/fuzz", "type": "com.example.view",
                      "dataschema": PAGE_VIEW, "time": "2024-05-01T12:00:00Z"}
        binary = _json_post("/ce", {"url": marker}, "application/json",
                            *[(f"ce-{k}", v) for k, v in attributes.items()])
        return [
            _json_post("/ce", {**attributes, "data": {"url": marker}}, "application/cloudevents+json"),
            _json_post("/ce", [{**attributes, "data": {"url": marker}},
                               {**attributes, "id": "ce-2", "data_base64": base64.b64encode(marker.encode()).decode(),
                                "dataschema": None, "datacontenttype": "application/octet-stream"}],
                       "application/cloudevents-batch+json"),
            binary,
        ]
    if route == "webhook":
        form = Request("POST", "/webhook", headers=_headers(("content-type", "application/x-www-form-urlencoded")),
                       body=urlencode({"a": marker, "b": "2"}).encode())
        text = Request("POST", "/webhook", headers=_headers(("content-type", "text/plain; charset=utf-8")),
                       body=marker.encode())
        return [_json_post("/webhook", {"event": "push", "url": marker, "n": [1, 2.5, None, True]}), form, text,
                signed(_json_post("/webhook/click", {"id": "buy", "label": marker}))]
    if route == "pixel":
        return [_get("/pixel", {"e": "open", "m": marker}), _get("/pixel/view", {"url": marker, "title": "t"})]
    if route == "schemas":
        schema = Request("GET", "/s/" + PAGE_VIEW, headers=_headers())
        purge = Request("POST", "/c/purge", query="schema=" + PAGE_VIEW,
                        headers=_headers(("authorization", "Bearer " + PURGE_TOKEN)))
        return [schema, purge]
    raise ValueError(route)


# Mutations ---------------------------------------------------------------------------------------------

Mutation = Callable[[Request, random.Random], None]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*path, index))
    return out


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = new
    return doc


_DEEPER = "__nesting__"
"""Stands, in a document, for nesting too deep for json.dumps: replaced by the text itself when encoding."""


def _dumps(doc: Any) -> str:
    text = json.dumps(doc)
    while f'"{_DEEPER}' in text:
        start = text.index(f'"{_DEEPER}')
        end = text.index('"', start + 1) + 1
        depth = int(text[start + 1 + len(_DEEPER) : end - 1])
        text = text[:start] + "[" * depth + "]" * depth + text[end:]
    return text


def _sync(request: Request) -> None:
    """Remake the body (or query) from ``doc`` after a structural mutation."""
    if request.doc_is_query:
        params = request.doc if isinstance(request.doc, dict) else {"x": request.doc}
        request.query = _query(params)
    else:
        request.body = _dumps(request.doc).encode()


def _structural(change: Callable[[Any, random.Random], Any]) -> Mutation:
    """A mutation of one node of the JSON body (or of the query parameters, as data)."""

    def mutate(request: Request, rnd: random.Random) -> None:
        if request.doc is None:
            # Not JSON (any more): the body becomes some JSON that is wrong in the same way.
            request.doc = {"x": request.body.decode("latin-1")}
            request.doc_is_query = False
        doc = request.doc
        path = rnd.choice(_paths(doc))
        node = doc
        for part in path:
            node = node[part]
        request.doc = _replace(doc, path, change(node, rnd))
        _sync(request)

    return mutate


def _nested(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"k": leaf}
    return leaf


def _other_type(node: Any, rnd: random.Random) -> Any:
    choices: list[Any] = [None, True, 0, -1, 2**63, 1.5, "", "s", [], {}, [node], {"k": node}]
    return rnd.choice([c for c in choices if type(c) is not type(node)])


def _huge(node: Any, rnd: random.Random) -> Any:
    kind = rnd.randrange(5)
    if kind == 0:
        return "x" * rnd.choice([1_000, 30_000, MAX_BODY + 10])
    if kind == 1:
        return 10 ** rnd.choice([19, 40, 400])
    if kind == 2:
        return [node] * rnd.choice([100, 3_000])
    if kind == 3:
        return {f"k{i}": i for i in range(rnd.choice([100, 3_000]))}
    return "\u00e9\U0001f600\u0000\ud7ff" * 500


def _deep(node: Any, rnd: random.Random) -> Any:
    depth = rnd.choice([3, 60, 126, 127, 128, 129, 300, 1_000, 5_000])
    return _nested(depth, node) if depth < 500 else f"{_DEEPER}{depth}"


def _inner(request: Request, rnd: random.Random) -> None:
    """Mutate the JSON inside a tracker field (ue_px/cx base64, ue_pr/co text) or CloudEvents data_base64."""
    holders = [p for p in _paths(request.doc) if p and p[-1] in ("ue_px", "cx", "ue_pr", "co", "data_base64")]
    if not holders:
        _structural(_other_type)(request, rnd)
        return
    path = rnd.choice(holders)
    node = request.doc
    for part in path:
        node = node[part]
    field = path[-1]
    node = node if isinstance(node, str) else json.dumps(node)
    try:
        inner = json.loads(base64.urlsafe_b64decode(node + "===") if field in ("ue_px", "cx") else node)
    except (ValueError, TypeError):  # not base64 or JSON (any more), or no longer a string
        inner = {"x": 1}
    inner_path = rnd.choice(_paths(inner))
    inner_node = inner
    for part in inner_path:
        inner_node = inner_node[part]
    inner = _replace(inner, inner_path, rnd.choice([_other_type, _deep, _huge])(inner_node, rnd))
    text = _dumps(inner)
    new = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=") if field in ("ue_px", "cx") else text
    if field == "data_base64":
        new = base64.b64encode(text.encode()).decode()
    request.doc = _replace(request.doc, path, new)
    _sync(request)


def _bad_base64(request: Request, rnd: random.Random) -> None:
    holders = [p for p in _paths(request.doc) if p and p[-1] in ("ue_px", "cx", "data_base64")]
    if not holders:
        request.body += b"!!!"
        request.doc = None
        return
    path = rnd.choice(holders)
    node = request.doc
    for part in path:
        node = node[part]
    node = node if isinstance(node, str) else json.dumps(node)
    at = rnd.randrange(len(node) + 1)
    bad = rnd.choice(["!", "=", "==a", "\u00e9", " ", "%", "A", "AAAAA"])
    request.doc = _replace(request.doc, path, node[:at] + bad + node[at:] if bad != "A" else node[:-1])
    _sync(request)


def _truncate(request: Request, rnd: random.Random) -> None:
    if request.doc_is_query:
        request.query = request.query[: rnd.randrange(len(request.query) + 1)]
    else:
        request.body = request.body[: rnd.randrange(len(request.body) + 1)]
    request.doc = None


def _bad_utf8(request: Request, rnd: random.Random) -> None:
    bad = rnd.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x00", b"\xe2\x82"])
    if request.doc_is_query or rnd.random() < 0.2:
        at = rnd.randrange(len(request.query) + 1)
        request.query = request.query[:at] + bad.decode("latin-1") + request.query[at:]
        if rnd.random() < 0.5:
            request.query += "&p=%" + bad.hex()  # percent-encoded, decoded by the server
    else:
        at = rnd.randrange(len(request.body) + 1)
        request.body = request.body[:at] + bad + request.body[at:]
    request.doc = None


CONTENT_TYPES = [
    None, "", "text/plain", "application/json; charset=latin-1", "application/cloudevents+json",
    "application/cloudevents-batch+json", "application/cloudevents+xml", "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded", ";;;", "application/json, text/plain", "APPLICATION/JSON",
    "application/octet-stream", "image/gif", "application/xml",
]


def _content_type(request: Request, rnd: random.Random) -> None:
    request.set_header("content-type", rnd.choice(CONTENT_TYPES))


def _drop_header(request: Request, rnd: random.Random) -> None:
    names = [k for k, _ in request.headers if k not in ("connection",)] + ["content-length"]
    name = rnd.choice(names)
    if name == "content-length":
        request.no_length = True
    else:
        request.set_header(name, None)


def _dup_header(request: Request, rnd: random.Random) -> None:
    names = [k for k, _ in request.headers if k != "connection"] + ["content-length", "ce-id", "x-forwarded-for"]
    name = rnd.choice(names)
    value = rnd.choice(["1", "application/json", "", "2, 3", "\u00e9", "x" * 100])
    if name == "content-length":
        request.content_length = f"{len(request.body)}\r\ncontent-length: {rnd.choice([len(request.body), 0, 5])}"
    else:
        request.headers.insert(rnd.randrange(len(request.headers) + 1), (name, value))


def _gzip(request: Request, rnd: random.Random) -> None:
    kind = rnd.randrange(7)
    if kind == 0:  # the truth: must be taken as the plain body would be
        request.body = gzip.compress(request.body)
        request.set_header("content-encoding", "gzip")
    elif kind == 1:  # says gzip, is not
        request.set_header("content-encoding", "gzip")
    elif kind == 2:  # is gzip, does not say so
        request.body = gzip.compress(request.body)
    elif kind == 3:  # a bomb: small on the wire, far over max_body_bytes once expanded
        request.body = gzip.compress(b"[" + b" " * (MAX_BODY * 20) + b"]")
        request.set_header("content-encoding", rnd.choice(["gzip", "x-gzip"]))
    elif kind == 4:  # truncated
        request.body = gzip.compress(request.body)[: rnd.randrange(1, 20)]
        request.set_header("content-encoding", "gzip")
    elif kind == 5:
        request.body = zlib.compress(request.body)
        request.set_header("content-encoding", rnd.choice(["deflate", "gzip", "br", "zstd", "identity", "gzip, gzip"]))
    else:
        request.set_header("content-encoding", rnd.choice(["br", "compress", "", "GZIP", "identity"]))
    request.doc = None


METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "FOO", "get", "PRI"]


def _method(request: Request, rnd: random.Random) -> None:
    request.method = rnd.choice(METHODS)


def _path(request: Request, rnd: random.Random) -> None:
    path = request.path
    request.path = rnd.choice([
        path + "/", "/" + path, path + "/..", path + "/%2e%2e/x", path.upper(), path + "%00", "*",
        "http://127.0.0.1" + path, path + "#frag", "/" + "a" * 70_000, path.replace("/", "//"),
        path + "/\u00e9", path + "/" + "x" * 300, "/webhook/" + "../" * 5, "/s/iglu:../../etc/passwd",
        "/s/iglu:com.example/page_view/jsonschema/1-0-999", "/pixel/" + "%ff", "",
    ])


def _query_mutation(request: Request, rnd: random.Random) -> None:
    extra = rnd.choice([
        "&&&", "=", "%zz", "a=%", "u=" + "x" * 70_000, "e=%FF%FE", "u=javascript:alert(1)", "u=//evil.example",
        "u=https://evil.example/", "schema=iglu:x", "e=ue&ue_px=%%%", "ue_pr=" + "[" * 2_000,
    ])
    request.query = f"{request.query}&{extra}" if request.query else extra
    request.doc = None


def _expect(request: Request, rnd: random.Random) -> None:
    request.set_header("expect", rnd.choice(["100-continue", "100-Continue", " 100-continue ", "200-ok", ""]))


def _framing(request: Request, rnd: random.Random) -> None:
    kind = rnd.randrange(10)
    if kind == 0:
        request.chunked = True  # valid chunked framing
    elif kind == 1:
        request.chunked = True
        request.bad_chunks = True
    elif kind == 2:
        request.chunked = True
        request.content_length = str(len(request.body))  # both: request smuggling shape
    elif kind == 3:
        request.content_length = str(max(0, len(request.body) - rnd.randrange(1, 10)))  # the rest is "next request"
    elif kind == 4:
        request.suffix = rnd.choice([b"\r\n", b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1\r\n\r\n", b"\x00\xff" * 10])
    elif kind == 5:
        request.version = rnd.choice(["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x", "FOO"])
    elif kind == 6:
        request.headers.insert(0, rnd.choice([
            ("bad name", "x"), ("x-ctl", "a\x00b"), ("x-fold", "a\r\n folded"), ("", "empty"), ("x-nl", "a\nb"),
        ]))
    elif kind == 7:
        request.headers.insert(0, ("x-big", "y" * rnd.choice([10_000, 70_000])))
    elif kind == 8:  # kept alive, another request behind it on the same connection
        request.set_header("connection", None)
        request.suffix = b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    else:
        request.content_length = rnd.choice(["-1", "abc", "1" * 30, "+5", " 5", str(MAX_BODY * 100)])


def _cut(request: Request, rnd: random.Random) -> None:
    """Stop sending mid-request (after the request line): the server must answer 408 in time."""
    raw = request.encode()
    line_end = raw.find(b"\r\n") + 2
    if len(raw) > line_end + 1:
        request.cut = rnd.randrange(line_end + 1, len(raw))


MUTATIONS: dict[str, Mutation] = {
    "retype": _structural(_other_type),
    "huge": _structural(_huge),
    "deep": _structural(_deep),
    "inner": _inner,
    "bad_base64": _bad_base64,
    "truncate": _truncate,
    "bad_utf8": _bad_utf8,
    "content_type": _content_type,
    "drop_header": _drop_header,
    "dup_header": _dup_header,
    "expect": _expect,
    "gzip": _gzip,
    "method": _method,
    "path": _path,
    "query": _query_mutation,
    "framing": _framing,
}
"""Every mutation but ``cut``, which costs a timeout per case and is drawn separately and rarely."""


def build(route: str, marker: str, seed_index: int, mutations: list[tuple[str, int]]) -> Request:
    """The request of one case: a seed of ``route`` with ``mutations`` applied in order."""
    pool = seeds(route, marker)
    request = copy.deepcopy(pool[seed_index % len(pool)])
    for name, seed in mutations:
        rnd = random.Random(f"{name}/{seed}")
        (MUTATIONS.get(name) or _cut)(request, rnd)
    if route == "webhook" and request.path == "/webhook/click" and seed_index % 3 == 0:
        signed(request)  # sometimes re-signed, so that what follows the auth check is reached too
    return request
