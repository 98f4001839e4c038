"""A sink's batch: every envelope encoded once, as the JSON lines a file holds."""

from __future__ import annotations

import datetime
import json
from typing import Any

from streamer.core.components import Batch, BatchEncoder
from streamer.core.envelope import Envelope, Source

TSTAMP = datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=datetime.UTC)


def envelope(number: int, source: Source, **fields: Any) -> Envelope:
    return Envelope(
        id=f"0190a0a0-0000-7000-8000-00000000000{number}", collector_tstamp=TSTAMP, source=source,
        protocol="self_describing", payload={"url": "https://example.com/", "note": 'quote " and \u00fc', **fields},
    )  # fmt: skip


def line(number: int, source: str, extra: str = "") -> bytes:
    """The JSON line of ``envelope(number, ...)``, written out: the envelope format is a contract."""
    return (
        f'{{"id":"0190a0a0-0000-7000-8000-00000000000{number}","collector_tstamp":"2024-05-06T07:08:09.123456Z",'
        f'"source":{source},"protocol":"self_describing",'
        f'"payload":{{"url":"https://example.com/","note":"quote \\" and \u00fc"{extra}}},'
        '"schema":null,"schema_vendor":null,"schema_name":null,"schema_format":null,"schema_version":null,'
        '"event_tstamp":null,"contexts":null,"atomic":null,"valid":true,"errors":null,"tags":null}'
    ).encode()


def test_a_batch_holds_each_envelope_as_its_plain_json_line() -> None:
    shared = Source(input="web", client_ip="203.0.113.9", headers={"user-agent": "test"})
    other = Source(input="web", client_ip="198.51.100.7")
    units = [
        [envelope(1, shared)],
        [envelope(2, shared, n=1), envelope(3, shared, n=2), envelope(4, other, n=3), envelope(5, shared, n=4)],
    ]
    encoder = BatchEncoder()
    batch = Batch()
    for unit in units:
        encoder.add(batch, unit)
    shared_json = '{"input":"web","client_ip":"203.0.113.9","headers":{"user-agent":"test"}}'
    other_json = '{"input":"web","client_ip":"198.51.100.7"}'
    expected = [
        line(1, shared_json),
        line(2, shared_json, ',"n":1'),
        line(3, shared_json, ',"n":2'),
        line(4, other_json, ',"n":3'),
        line(5, shared_json, ',"n":4'),
    ]
    assert bytes(batch.data) == b"".join(one + b"\n" for one in expected)
    assert batch.lines == expected
    assert batch.nbytes == len(batch.data) == sum(len(one) + 1 for one in expected)
    assert len(batch) == 5
    assert batch.envelopes == [e for unit in units for e in unit]
    assert [json.loads(one)["payload"]["note"] for one in batch.lines] == ['quote " and \u00fc'] * 5
    # The raw Source spliced into the JSON is never left behind in an envelope.
    assert [e.source for unit in units for e in unit] == [shared] * 3 + [other, shared]
    assert Batch().lines == [] and Batch().data == b""
