"""What the fuzz tests share: the pipeline under test, the properties every answer must have, the corpus."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.fuzz.mutations import HOOK_SECRET, MAX_BODY, PAGE_VIEW, PURGE_TOKEN
from tests.fuzz.wire import Request, Response

CORPUS = Path(__file__).resolve().parent / "corpus"

PIPELINE = f"""
inputs:
  web:
    type: http
    port: 0
    max_body_bytes: {MAX_BODY}
    header_timeout: 0.25
    body_timeout: 0.25
    idle_timeout: 1
    request_timeout: 30
    routes:
      - {{type: self_describing, path: /events}}
      - type: snowplow
        redirect: {{enabled: true, allow_hosts: [www.example.com]}}
      - {{type: cloudevents, path: /ce}}
      - type: webhook
        hooks:
          click:
            schema: iglu:com.example/button_click/jsonschema/1-0-0
            auth:
              hmac: {{header: X-Signature, secret: "{HOOK_SECRET}"}}
      - type: pixel
        pixels:
          view: {{schema: "{PAGE_VIEW}"}}
      - {{type: schemas, purge_token: "{PURGE_TOKEN}"}}
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  valid: {{type: file, path: valid.jsonl, route: valid}}
  invalid: {{type: file, path: invalid.jsonl, route: invalid}}
"""

VOLATILE = ("id", "collector_tstamp")
"""Envelope fields that differ between two sends of the same request: everything else must not."""

SUCCESS_BODIES = {"application/json", "image/gif", "text/plain; charset=utf-8"}


def check_responses(request: Request, responses: list[Response]) -> None:
    """The properties of the answers to one hostile request (raises AssertionError naming the broken one).

    - no 5xx but a 503 for backpressure (``timeout``);
    - every refusal (4xx, 503) is a JSON object with a non-empty ``error`` and ``message``;
    - every request gets at least one answer, even one cut short after its request line (a 408 then).
    """
    assert responses, "no response at all"
    for response in responses:
        status = response.status
        assert status < 500 or status == 503, f"status {status}: {response!r}"
        if status >= 400:
            assert response.headers.get("content-type") == "application/json", f"refusal not JSON: {response!r}"
            body = response.json()
            assert isinstance(body, dict), f"refusal not a JSON object: {response!r}"
            assert isinstance(body.get("error"), str) and body["error"], f"no error kind: {response!r}"
            assert isinstance(body.get("message"), str) and body["message"], f"no message: {response!r}"
            if status == 503:
                assert body["error"] == "timeout", f"503 not by backpressure: {response!r}"
        elif response.headers.get("content-type") == "application/json":
            response.json()  # a success that says JSON is JSON


def normalized(envelope: dict[str, Any]) -> str:
    """The envelope without the fields that differ from one send to the next, as comparable text."""
    return json.dumps({k: v for k, v in envelope.items() if k not in VOLATILE}, sort_keys=True)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a sink's file, split on newlines only.

    Not tests.support.read_jsonl: ``str.splitlines`` also splits on U+0085, U+2028 and other
    separators, which JSON strings hold unescaped (a webhook's latin-1 text, say).
    """
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n") if line.strip()]


def written(directory: Path) -> list[dict[str, Any]]:
    """Every line the pipeline wrote; each must be a JSON envelope."""
    lines = read_lines(directory / "valid.jsonl") + read_lines(directory / "invalid.jsonl")
    for envelope in lines:
        assert {"id", "collector_tstamp", "source", "protocol"} <= envelope.keys(), envelope
    return lines


def by_marker(envelopes: list[dict[str, Any]], markers: list[str]) -> dict[str, Counter[str]]:
    """For each marker, the (normalized) envelopes that hold it."""
    out: dict[str, Counter[str]] = {marker: Counter() for marker in markers}
    for envelope in envelopes:
        text = json.dumps(envelope)
        for marker in markers:
            if marker in text:
                out[marker][normalized(envelope)] += 1
    return out


def same_answer(alone: Response, now: Response) -> bool:
    if (alone.status, alone.headers.get("content-type"), alone.headers.get("location")) != (
        now.status, now.headers.get("content-type"), now.headers.get("location"),
    ):
        return False
    if alone.headers.get("content-type") == "application/json":
        return bool(alone.json() == now.json())
    return alone.body == now.body


def save_case(route: str, raw: bytes, problem: str) -> Path:
    """Keep a failing request in the corpus (named by its content), to be replayed on every run."""
    CORPUS.mkdir(exist_ok=True)
    digest = hashlib.sha256(raw).hexdigest()[:12]
    path = CORPUS / f"found-{route}-{digest}.json"
    path.write_text(
        json.dumps({"route": route, "problem": problem, "request": raw.decode("latin-1")}, indent=1) + "\n"
    )
    return path
