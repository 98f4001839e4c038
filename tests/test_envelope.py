"""The envelope's helpers: schema URI parts, event ids."""

from __future__ import annotations

import uuid

from streamer.core.envelope import (
    NO_SCHEMA_PARTS,
    Envelope,
    Source,
    new_event_id,
    new_event_ids,
    schema_parts,
    set_schema,
    utc_now,
)


def test_schema_parts_of_iglu_uris_and_of_others() -> None:
    assert schema_parts("iglu:com.example/page_view/jsonschema/1-0-0") == (
        "com.example", "page_view", "jsonschema", "1-0-0",
    )  # fmt: skip
    others = ("https://example.com/s.json", "iglu:com.example/page_view/jsonschema", "iglu:a//c/d", "iglu:a/b/c/d/e")
    for uri in others:
        assert schema_parts(uri) is NO_SCHEMA_PARTS


def test_set_schema_leaves_the_parts_empty_for_a_uri_that_is_not_iglu() -> None:
    envelope = Envelope(id="1", collector_tstamp=utc_now(), source=Source(input="web"), protocol="raw")
    set_schema(envelope, "urn:example:thing")
    assert envelope.schema == "urn:example:thing" and envelope.schema_vendor is None
    set_schema(envelope, "iglu:com.example/page_view/jsonschema/1-0-0")
    assert (envelope.schema_vendor, envelope.schema_version) == ("com.example", "1-0-0")


def test_event_ids_are_distinct_canonical_uuid4_strings() -> None:
    ids = new_event_ids(5000) + [new_event_id() for _ in range(3000)]  # across refills of 2048
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert (str(parsed), parsed.version, parsed.variant) == (event_id, 4, uuid.RFC_4122)
    assert {event_id[19] for event_id in ids} == set("89ab")  # every variant digit occurs
    assert len({event_id[0] for event_id in ids}) == 16  # random digits are not stuck
