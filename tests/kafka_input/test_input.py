"""The Kafka input against a real broker (Tansu): decoding, ids, ordered commits, failed units, restarts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
import pytest

import tests.kafka_input.sinks  # noqa: F401 - registers the `gated` test sink
from streamer.core.runtime import Pipeline
from streamer.kafka.input import KafkaInput, KafkaInputError, record_event_id
from tests.kafka_input.conftest import FAST_GROUP, Broker, committed, create_topic, produce, unique
from tests.support import PAGE_VIEW, SCHEMAS, compile_text, read_jsonl, running, sink, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.services]

SINKS = """
  valid: {type: file, path: valid.jsonl}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


def pipeline(broker: Broker, topic: str, group: str, extra: str = "", sinks: str = SINKS) -> str:
    return f"""
name: kafka-test
inputs:
  events:
    type: kafka
    brokers: {broker.address}
    topics: [{topic}]
    group: {group}
    {FAST_GROUP}
    commit_interval: 0.1
{extra}
registry:
  repositories:
    - {{type: file, path: "${{SCHEMAS}}"}}
sinks:
{sinks}
"""


def page_view(n: int) -> bytes:
    return json.dumps({"schema": PAGE_VIEW, "data": {"url": f"https://example.com/{n}"}}).encode()


def kafka_input(p: Pipeline) -> KafkaInput:
    found = p.inputs[0]
    assert isinstance(found, KafkaInput)
    return found


async def settled(p: Pipeline, tmp_path: Path, valid: int, invalid: int = 0, timeout: float = 20) -> None:
    def done() -> bool:
        written = len(read_jsonl(tmp_path / "valid.jsonl")), len(read_jsonl(tmp_path / "invalid.jsonl"))
        return written[0] >= valid and written[1] >= invalid

    await wait_until(done, timeout, f"{valid} valid and {invalid} invalid events written")


async def test_self_describing_records_become_events_with_their_kafka_metadata(
    broker: Broker, tmp_path: Path
) -> None:
    topic = await create_topic(broker.address)
    await produce(broker.address, topic, [page_view(0)], key=b"user-1", headers=[("trace", b"abc"), ("bin", b"\xff")])
    await produce(broker.address, topic, [page_view(1), page_view(2)])
    async with running(pipeline(broker, topic, unique("g")), tmp_path) as p:
        await settled(p, tmp_path, 3)
    events = read_jsonl(tmp_path / "valid.jsonl")
    assert [e["payload"]["url"] for e in events] == [f"https://example.com/{n}" for n in range(3)]
    first = events[0]
    assert first["schema"] == PAGE_VIEW and first["valid"] is True and first["protocol"] == "self_describing"
    assert first["source"]["input"] == "events"
    kafka = first["source"]["metadata"]["kafka"]
    assert kafka["topic"] == topic and kafka["partition"] == 0 and kafka["offset"] == 0
    assert kafka["key"] == "user-1"
    assert kafka["headers"] == {"trace": "abc"}
    assert kafka["headers_base64"] == {"bin": base64.b64encode(b"\xff").decode()}
    assert isinstance(kafka["timestamp"], int) and kafka["timestamp"] > 1_700_000_000_000
    assert "key" not in events[1]["source"]["metadata"]["kafka"]
    # Ids derive from topic/partition/offset: the same whenever the record is read.
    assert [e["id"] for e in events] == [record_event_id(topic, 0, n) for n in range(3)]
    assert len({e["id"] for e in events}) == 3


async def test_a_poison_record_goes_to_the_invalid_route_with_its_error_and_bytes(
    broker: Broker, tmp_path: Path
) -> None:
    topic = await create_topic(broker.address)
    poison = b"\x00\x01not json \xff"
    await produce(broker.address, topic, [page_view(0), poison, b'{"no": "schema"}', None, page_view(4)])
    async with running(pipeline(broker, topic, unique("g")), tmp_path) as p:
        await settled(p, tmp_path, 2, 3)
        assert kafka_input(p).records == 5
    valid = read_jsonl(tmp_path / "valid.jsonl")
    invalid = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["source"]["metadata"]["kafka"]["offset"] for e in valid] == [0, 4]
    bad, wrong_shape, tombstone = invalid
    assert bad["valid"] is False
    assert base64.b64decode(bad["payload"]["raw_base64"]) == poison
    assert bad["errors"][0]["keyword"] == "decode" and "not valid JSON" in bad["errors"][0]["message"]
    assert bad["source"]["metadata"]["kafka"]["offset"] == 1
    assert wrong_shape["payload"] == {"no": "schema"} and wrong_shape["errors"][0]["keyword"] == "self_describing"
    assert tombstone["payload"] is None and "tombstone" in tombstone["errors"][0]["message"]


async def test_json_records_are_validated_against_the_configured_schema(broker: Broker, tmp_path: Path) -> None:
    topic = await create_topic(broker.address)
    await produce(broker.address, topic, [b'{"url": "https://example.com/"}', b'{"title": 42}', b"[1, 2"])
    spec = pipeline(broker, topic, unique("g")).replace(
        "    commit_interval: 0.1", f"    commit_interval: 0.1\n    format: json\n    schema: {PAGE_VIEW}"
    )
    async with running(spec, tmp_path) as p:
        await settled(p, tmp_path, 1, 2)
    (valid,) = read_jsonl(tmp_path / "valid.jsonl")
    assert valid["payload"] == {"url": "https://example.com/"} and valid["schema"] == PAGE_VIEW
    assert valid["protocol"] == "json"
    wrong, broken = read_jsonl(tmp_path / "invalid.jsonl")
    assert wrong["payload"] == {"title": 42} and wrong["schema"] == PAGE_VIEW
    assert base64.b64decode(broken["payload"]["raw_base64"]) == b"[1, 2"


async def test_envelopes_read_back_keep_their_id_times_and_source(broker: Broker, tmp_path: Path) -> None:
    # What a streamer sink writes (an envelope, or a dead letter wrapping one) is read as that envelope.
    topic = await create_topic(broker.address)
    original = {
        "id": "6f1c9a0e-3d4b-4c8e-9a51-2f0e8d7c6b5a",
        "collector_tstamp": "2026-12-01T10:00:00Z",
        "source": {"input": "web", "client_ip": "203.0.113.9"},
        "protocol": "snowplow",
        "payload": {"url": "https://example.com/"},
        "schema": PAGE_VIEW,
        "valid": False,
        "errors": [{"keyword": "stale", "message": "validated again"}],
    }
    dead_letter = {
        "dead_letter": {"sink": "s", "reason": "failed", "attempts": 3, "time": "2026-12-01T10:00:01Z"},
        "envelope": {**original, "id": "0b7c4e1a-9f2d-4a63-8e15-c3d2b1a09f87"},
    }
    await produce(broker.address, topic, [json.dumps(original).encode(), json.dumps(dead_letter).encode(), b"{}"])
    spec = pipeline(broker, topic, unique("g")).replace(
        "    commit_interval: 0.1", "    commit_interval: 0.1\n    format: envelope"
    )
    async with running(spec, tmp_path) as p:
        await settled(p, tmp_path, 2, 1)
    first, second = read_jsonl(tmp_path / "valid.jsonl")
    assert first["id"] == original["id"] and second["id"] == dead_letter["envelope"]["id"]
    assert first["collector_tstamp"].startswith("2026-12-01T10:00:00")
    assert first["protocol"] == "snowplow" and first["valid"] is True and first["errors"] is None
    assert first["source"]["client_ip"] == "203.0.113.9" and first["source"]["input"] == "web"
    assert first["source"]["metadata"]["kafka"]["offset"] == 0
    (not_envelope,) = read_jsonl(tmp_path / "invalid.jsonl")
    assert not_envelope["payload"] == {} and "not a streamer envelope" in not_envelope["errors"][0]["message"]


async def test_the_committed_offset_never_passes_a_unit_still_unwritten(broker: Broker, tmp_path: Path) -> None:
    # One record per unit, a sink writing up to 8 batches at once and settling them in the order the test
    # picks: later units settle first, and the commit must wait for the oldest.
    topic = await create_topic(broker.address)
    group = unique("g")
    await produce(broker.address, topic, [page_view(n) for n in range(8)])
    spec = pipeline(
        broker, topic, group, extra="    max_records: 1",
        sinks="  gated: {type: gated, delivery: {max_in_flight: 8, batch_size: 1}}",
    )
    async with running(spec, tmp_path) as p:
        gated = sink(p, "gated")
        await wait_until(lambda: len(gated.held) == 8, 20, "8 writes held")
        for offset in (7, 6, 5, 3, 2):
            gated.release(offset)
        await anyio.sleep(0.5)  # five commit intervals
        assert await committed(broker.address, group, topic) == [None]
        gated.release(0)
        (partition,) = kafka_input(p).partitions.values()
        await wait_until(lambda: partition.checkpoint.highest == 1)
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic) == [1]
        gated.release(1)
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic) == [4]  # 3 was written, 4 is not
        gated.release(4)
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic) == [8]
        assert gated.written == [7, 6, 5, 3, 2, 0, 1, 4]


async def test_a_restart_resumes_after_the_committed_offset(broker: Broker, tmp_path: Path) -> None:
    topic = await create_topic(broker.address, partitions=2)
    group = unique("g")
    await produce(broker.address, topic, [page_view(n) for n in range(10)])
    async with running(pipeline(broker, topic, group), tmp_path) as p:
        await settled(p, tmp_path, 10)
    assert await committed(broker.address, group, topic, 2) == [5, 5]  # committed on stop
    await produce(broker.address, topic, [page_view(n) for n in range(10, 14)])
    async with running(pipeline(broker, topic, group), tmp_path) as p:
        await settled(p, tmp_path, 14)
        await anyio.sleep(0.3)
        assert kafka_input(p).records == 4
    urls = sorted(int(e["payload"]["url"].rsplit("/", 1)[1]) for e in read_jsonl(tmp_path / "valid.jsonl"))
    assert urls == list(range(14))
    assert await committed(broker.address, group, topic, 2) == [7, 7]


FLAKY = "  flaky: {type: flaky, delivery: {retries: 0, retry_backoff: 0.01}}"
RETRIES = "    max_retries: 2\n    retry_backoff: 0.05"


async def test_a_failed_unit_is_retried_and_holds_the_commit_until_written(broker: Broker, tmp_path: Path) -> None:
    topic = await create_topic(broker.address)
    group = unique("g")
    await produce(broker.address, topic, [page_view(n) for n in range(5)])
    patient = "    max_retries: 50\n    retry_backoff: 0.05\n    retry_max_backoff: 0.1"
    async with running(pipeline(broker, topic, group, extra=patient, sinks=FLAKY), tmp_path) as p:
        flaky = sink(p, "flaky")
        flaky.down = True
        source = kafka_input(p)
        await wait_until(lambda: source.retried >= 1, 10, "a retry")
        # Records arriving meanwhile: the partition is paused (held) rather than read past the failed unit.
        await produce(broker.address, topic, [page_view(n) for n in range(5, 8)])
        await wait_until(lambda: bool(source._held), 10, "the partition held")
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic) == [None]
        flaky.down = False
        await wait_until(lambda: len(set(flaky.written)) == 8, 10, "the unit and the records after it written")
        assert not source._held
        await produce(broker.address, topic, [page_view(8)])  # the partition fetches again
        await wait_until(lambda: len(set(flaky.written)) == 9, 10, "the next record written")
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic) == [9]
    # The retry carried the same ids: nothing new was minted; each record was written once.
    assert sorted(flaky.written) == sorted(record_event_id(topic, 0, n) for n in range(9))


async def test_a_unit_failing_after_max_retries_stops_the_pipeline_with_a_clear_error(
    broker: Broker, tmp_path: Path
) -> None:
    topic = await create_topic(broker.address)
    group = unique("g")
    await produce(broker.address, topic, [page_view(n) for n in range(3)])
    compiled = compile_text(pipeline(broker, topic, group, extra=RETRIES, sinks=FLAKY), {"SCHEMAS": str(SCHEMAS)})
    from streamer.core.graph import build_pipeline

    p = build_pipeline(compiled, "asyncio", base_dir=tmp_path)

    async def break_sink() -> None:
        await p.context.ready.wait()
        sink(p, "flaky").down = True

    with pytest.raises(BaseException) as raised:  # an exception group holding the input's error
        async with anyio.create_task_group() as tg:
            tg.start_soon(break_sink)
            with anyio.fail_after(20):
                await p.run()
    errors = _leaves(raised.value)
    assert any(isinstance(e, KafkaInputError) for e in errors), errors
    message = str(next(e for e in errors if isinstance(e, KafkaInputError)))
    assert f"{topic}[0] offsets 0-2 could not be written after 2 retries" in message
    assert "connection refused" in message
    assert await committed(broker.address, group, topic) == [None]


async def test_on_failure_invalid_routes_the_unit_to_the_invalid_sinks(broker: Broker, tmp_path: Path) -> None:
    topic = await create_topic(broker.address)
    group = unique("g")
    await produce(broker.address, topic, [page_view(n) for n in range(3)])
    sinks = FLAKY + "\n  invalid: {type: file, path: invalid.jsonl, route: invalid}"
    extra = RETRIES + "\n    on_failure: invalid"
    async with running(pipeline(broker, topic, group, extra=extra, sinks=sinks), tmp_path) as p:
        sink(p, "flaky").down = True
        await settled(p, tmp_path, 0, 3)
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic) == [3]
        assert kafka_input(p).rerouted == 3
    events = read_jsonl(tmp_path / "invalid.jsonl")
    assert [e["id"] for e in events] == [record_event_id(topic, 0, n) for n in range(3)]
    assert events[0]["errors"][-1]["keyword"] == "delivery"
    assert "not written after 2 retries" in events[0]["errors"][-1]["message"]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def test_the_spec_refuses_contradictions() -> None:
    from streamer.core.config import ConfigError

    base = (
        "name: x\ninputs:\n  k:\n    type: kafka\n    brokers: 127.0.0.1:9092\n    group: g\n{}\n"
        "sinks:\n  s: {{type: blackhole}}\n"
    )
    for extra, expected in [
        ("", "give either `topics`"),
        ("    topics: [a]\n    pattern: 'a.*'", "give either `topics`"),
        ("    pattern: '('", "not a regular expression"),
        ("    topics: [a]\n    format: json", "`format: json` needs `schema`"),
        ("    topics: [a]\n    schema: iglu:a/b/jsonschema/1-0-0", "applies to `format: json` only"),
        ("    topics: [a]\n    session_timeout: 1\n    heartbeat_interval: 1", "below `session_timeout`"),
    ]:
        with pytest.raises(ConfigError) as raised:
            compile_text(base.format(extra))
        assert expected in str(raised.value), (extra, str(raised.value))


def test_event_ids_are_uuids_stable_per_position() -> None:
    import uuid

    first = record_event_id("events", 3, 2**40 + 7)
    assert first == record_event_id("events", 3, 2**40 + 7)
    parsed = uuid.UUID(first)
    assert parsed.version == 8 and parsed.variant == uuid.RFC_4122
    assert len({record_event_id("events", p, o) for p in range(4) for o in range(1000)}) == 4000
    assert record_event_id("events", 0, 5) != record_event_id("other", 0, 5)



async def test_an_unreachable_broker_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    from tests.kafka_input.conftest import free_port

    port = free_port()  # nothing listens there
    text = f"""
name: k
inputs:
  events: {{type: kafka, brokers: "127.0.0.1:{port}", topics: [t], group: g, request_timeout: 2}}
sinks:
  s: {{type: blackhole}}
"""
    from streamer.core.graph import build_pipeline

    p = build_pipeline(compile_text(text), "asyncio", base_dir=tmp_path)
    with pytest.raises(BaseException) as raised:  # an exception group holding the input's error
        with anyio.fail_after(20):
            await p.run()
    (error,) = [e for e in _leaves(raised.value) if isinstance(e, KafkaInputError)]
    assert f"kafka input 'events' cannot start on 127.0.0.1:{port}: KafkaConnectionError" in str(error)


async def test_a_rebalance_commits_what_is_written_of_the_revoked_partitions_and_forgets_the_rest(
    broker: Broker, tmp_path: Path
) -> None:
    topic = await create_topic(broker.address, partitions=2)
    group = unique("g")
    await produce(broker.address, topic, [page_view(n) for n in range(8)])  # offsets 0-3 in each partition
    gated_spec = pipeline(
        broker, topic, group, extra="    max_records: 1",
        sinks="  gated: {type: gated, delivery: {max_in_flight: 8, batch_size: 1}}",
    )
    (tmp_path / "b").mkdir()
    async with running(gated_spec, tmp_path) as a:
        gated = sink(a, "gated")
        await wait_until(lambda: len(gated.held) == 8, 20, "8 writes held")
        for place in [(0, 0), (0, 1), (1, 0)]:
            gated.release(place[1], place[0])
        await wait_until(lambda: gated.written_at == [(0, 0), (0, 1), (1, 0)], 10)
        await anyio.sleep(0.3)
        assert await committed(broker.address, group, topic, 2) == [2, 1]
        # A second member joins: every partition is revoked from the first; what it wrote is committed, the
        # rest (offsets 2-3 of partition 0, 1-3 of partition 1) is read again by whoever owns it next.
        async with running(pipeline(broker, topic, group), tmp_path / "b") as b:
            await wait_until(lambda: len(kafka_input(b).partitions) == 1, 20, "the second member's partition")
            (taken,) = [tp.partition for tp in kafka_input(b).partitions]
            await wait_until(lambda: len(kafka_input(a).partitions) == 1, 20, "the first member's partition")
            gated.release_all()
            rest = {0: [2, 3], 1: [1, 2, 3]}
            await settled(b, tmp_path / "b", len(rest[taken]))
            offsets = [e["source"]["metadata"]["kafka"]["offset"] for e in read_jsonl(tmp_path / "b" / "valid.jsonl")]
            assert offsets == rest[taken]  # from the revoked partition's committed offset, not from 0
            kept = 1 - taken
            # The kept partition's unwritten units were forgotten too (eager rebalancing revokes every partition)
            # and read again: their first reads, released now, are written as well (the same ids twice).
            await wait_until(lambda: {o for p, o in gated.written_at if p == kept} == {0, 1, 2, 3}, 10)
            await anyio.sleep(0.3)
            assert await committed(broker.address, group, topic, 2) == [4, 4]


async def test_a_pattern_subscribes_to_every_matching_topic(broker: Broker, tmp_path: Path) -> None:
    prefix = unique("pat")
    first = await create_topic(broker.address, prefix=prefix)
    second = await create_topic(broker.address, prefix=prefix)
    await create_topic(broker.address, prefix=unique("other"))
    await produce(broker.address, first, [page_view(1)])
    await produce(broker.address, second, [page_view(2)])
    spec = pipeline(broker, "unused", unique("g")).replace("    topics: [unused]\n", f"    pattern: '{prefix}-.*'\n")
    async with running(spec, tmp_path) as p:
        await settled(p, tmp_path, 2)
    topics = sorted(e["source"]["metadata"]["kafka"]["topic"] for e in read_jsonl(tmp_path / "valid.jsonl"))
    assert topics == sorted([first, second])


async def test_start_from_latest_skips_what_a_new_group_finds_in_the_topic(broker: Broker, tmp_path: Path) -> None:
    topic = await create_topic(broker.address)
    # One record per produce: Tansu 0.6 gives the end of a partition whose last batch holds several records
    # as that batch's first offset + 1 (Kafka: its last + 1), so `latest` would start inside the batch there.
    await produce(broker.address, topic, [page_view(0)])
    await produce(broker.address, topic, [page_view(1)])
    spec = pipeline(broker, topic, unique("g"), extra="    start_from: latest")
    async with running(spec, tmp_path) as p:
        (partition,) = kafka_input(p).partitions  # assigned when the input has started
        assert await kafka_input(p)._consumer.position(partition) == 2
        await produce(broker.address, topic, [page_view(2)])
        await settled(p, tmp_path, 1)
        await anyio.sleep(0.2)
    assert [e["payload"]["url"] for e in read_jsonl(tmp_path / "valid.jsonl")] == ["https://example.com/2"]
