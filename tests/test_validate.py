"""The validate processor: every JSON Schema draft jsonschema-rs supports, contexts, precise errors."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support import http_port, running, sink

pytestmark = pytest.mark.anyio

DRAFTS = {
    "4": "http://json-schema.org/draft-04/schema#",
    "6": "http://json-schema.org/draft-06/schema#",
    "7": "http://json-schema.org/draft-07/schema#",
    "2019": "https://json-schema.org/draft/2019-09/schema",
    "2020": "https://json-schema.org/draft/2020-12/schema",
}


def write_schemas(root: Path) -> None:
    for name, uri in DRAFTS.items():
        folder = root / "com.test" / f"draft{name}" / "jsonschema"
        folder.mkdir(parents=True)
        schema = {"$schema": uri, "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
        (folder / "1-0-0").write_text(json.dumps(schema))


PIPELINE = """
inputs:
  web: {type: http, port: 0}
registry:
  repositories: [{type: file, path: schemas}]
sinks:
  valid: {type: controlled, route: valid}
  invalid: {type: controlled, route: invalid}
"""


async def test_every_supported_draft_validates(tmp_path: Path) -> None:
    write_schemas(tmp_path / "schemas")
    events = []
    for name in DRAFTS:
        uri = f"iglu:com.test/draft{name}/jsonschema/1-0-0"
        events += [{"schema": uri, "data": {"n": 1}}, {"schema": uri, "data": {"n": "one"}}]
    async with running(PIPELINE, tmp_path) as p:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{http_port(p)}/events", json=events)
        assert response.json() == {"received": 10, "invalid": 5}
        invalid = [json.loads(line) for line in sink(p, "invalid").lines]
    assert {e["schema_name"] for e in invalid} == {f"draft{n}" for n in DRAFTS}
    assert all(e["errors"][0]["path"] == "$.n" and e["errors"][0]["keyword"] == "type" for e in invalid)


async def test_contexts_are_validated_and_unknown_schemas_are_invalid(tmp_path: Path) -> None:
    write_schemas(tmp_path / "schemas")
    good = {"schema": "iglu:com.test/draft7/jsonschema/1-0-0", "data": {"n": 1}}
    bad_context = {**good, "contexts": [good, {"schema": good["schema"], "data": {}}]}
    unknown = {"schema": "iglu:com.test/nope/jsonschema/1-0-0", "data": {}}
    escape = {"schema": "iglu:../../etc/passwd/1-0-0", "data": {}}
    async with running(PIPELINE, tmp_path) as p:
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"http://127.0.0.1:{http_port(p)}/events", json=[bad_context, unknown, escape]
            )
        assert response.json() == {"received": 3, "invalid": 3}
        context_error, not_found, refused = ([json.loads(line) for line in sink(p, "invalid").lines])
    assert context_error["errors"] == [
        {"path": "$.contexts[1].data", "keyword": "required", "message": '"n" is a required property',
         "schema": "iglu:com.test/draft7/jsonschema/1-0-0"}
    ]
    assert not_found["errors"][0]["keyword"] == "schema_not_found"
    assert refused["errors"][0]["keyword"] == "schema_uri"


async def test_ready_is_503_while_draining(tmp_path: Path) -> None:
    write_schemas(tmp_path / "schemas")
    async with running(PIPELINE + "runtime: {drain_delay: 30}\n", tmp_path) as p:
        port = http_port(p)
        valid = sink(p, "valid")
        valid.block()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/ready")).status_code == 200
            async with anyio.create_task_group() as tg:
                event = {"schema": "iglu:com.test/draft7/jsonschema/1-0-0", "data": {"n": 1}}
                tg.start_soon(functools.partial(client.post, "/events", json=event))
                await valid.waiting.wait()
                tg.start_soon(p.drain)
                await anyio.sleep(0.05)
                ready = await client.get("/ready")
                assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
                # Still serving during the delay: a load balancer may not have noticed yet.
                assert (await client.get("/health")).status_code == 200
                valid.release()
                p.stop()
    assert len(valid.lines) == 1
