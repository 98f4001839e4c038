"""A sink's batch: every envelope encoded once, as the JSON lines a file holds."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from streamer.core.components import Batch, BatchEncoder
from streamer.core.envelope import Envelope, Source, new_event_id, utc_now


def envelope(source: Source, **fields: Any) -> Envelope:
    return Envelope(
        id=new_event_id(), collector_tstamp=utc_now(), source=source, protocol="self_describing",
        payload={"url": "https://example.com/", "note": 'quote " and \u00fc', **fields},
    )  # fmt: skip


def test_a_batch_holds_each_envelope_as_its_plain_json_line() -> None:
    shared = Source(input="web", client_ip="203.0.113.9", headers={"user-agent": "test"})
    other = Source(input="web", client_ip="198.51.100.7")
    units = [
        [envelope(shared)],
        [envelope(shared, n=1), envelope(shared, n=2), envelope(other, n=3), envelope(shared, n=4)],
    ]
    encoder = BatchEncoder()
    batch = Batch()
    for unit in units:
        encoder.add(batch, unit)
    everything = [e for unit in units for e in unit]
    expected = [msgspec.json.encode(e) for e in everything]
    assert bytes(batch.data) == b"".join(line + b"\n" for line in expected)
    assert batch.lines == expected
    assert batch.nbytes == len(batch.data) and len(batch) == 5
    assert [json.loads(line)["source"]["client_ip"] for line in batch.lines] == ["203.0.113.9"] * 3 + [
        "198.51.100.7", "203.0.113.9",
    ]  # fmt: skip
    assert all(e.source in (shared, other) for e in everything)  # the spliced raw Source is never left behind
    assert Batch().lines == [] and Batch().data == b""
