"""The kafka sink on Tansu: what lands (value, key, headers, topic), topics, compression, errors, settings."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import msgspec
import pytest

from streamer.core.components import BatchEncoder
from streamer.core.envelope import Envelope
from streamer.core.errors import BatchError, FatalError
from streamer.kafka.settings import KafkaConnection, Sasl, Tls, client_options, describe
from streamer.kafka.sink import KafkaSink, KafkaSinkError, KafkaSinkSpec
from streamer.testing import sample_envelopes
from tests.kafka.conftest import create_topic, make_sink, read_records, topic_names
from tests.registry.conftest import free_port
from tests.support import compile_text

pytestmark = [pytest.mark.anyio, pytest.mark.services]


async def write(sink: KafkaSink, envelopes: list[Envelope]) -> None:
    await sink.write(BatchEncoder(sink.encoding).batch(envelopes))


def envelope_json(envelope: Envelope) -> Any:
    return msgspec.json.decode(msgspec.json.encode(envelope))


@pytest.mark.parametrize("compression", ["none", "gzip"])
async def test_record_equals_envelope_key_is_id_headers_are_fields(kafka: str, topic: str, compression: str) -> None:
    await create_topic(kafka, topic, partitions=4)
    envelopes = sample_envelopes(40)
    sink = make_sink(kafka, topic, headers=["schema", "protocol", "source.input", "valid", "source.metadata"],
                     compression=compression)  # fmt: skip
    await sink.open()
    try:
        await write(sink, envelopes)
    finally:
        await sink.aclose()
    records = await read_records(kafka, topic, expect=len(envelopes))
    by_id = {record.key.decode(): record for record in records}
    assert len(records) == len(envelopes) == len(by_id)
    for envelope in envelopes:
        record = by_id[envelope.id]  # the key is the event id
        assert json.loads(record.value) == envelope_json(envelope)  # field by field, types included
        # The record's time is the collector time: 2026-12-04T10:00:<n % 60>.123Z, in milliseconds.
        n = int(envelope.id[-12:])
        assert record.timestamp == 1796378400123 + (n % 60) * 1000
        assert dict(record.headers) == {
            "schema": b"iglu:com.example/conformance/jsonschema/1-0-0",
            "protocol": b"self_describing",
            "source.input": b"conformance",
            "valid": b"true" if envelope.valid else b"false",
            "source.metadata": b'{"partition":3,"offset":41}',
        }


async def test_an_event_always_lands_in_the_same_partition(kafka: str, topic: str) -> None:
    await create_topic(kafka, topic, partitions=6)
    envelopes = sample_envelopes(60)
    sink = make_sink(kafka, topic)
    await sink.open()
    try:
        await write(sink, envelopes)
        await write(sink, list(reversed(envelopes)))  # other batches, other order: same partitions
    finally:
        await sink.aclose()
    records = await read_records(kafka, topic, expect=120)
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        partitions.setdefault(record.key, set()).add(record.partition)
    assert len(partitions) == 60 and all(len(p) == 1 for p in partitions.values())
    assert len({p for ps in partitions.values() for p in ps}) > 1  # keys spread over partitions
    # Where any Kafka client puts the key: murmur2 (Java's default partitioner).
    from aiokafka.partitioner import murmur2

    for key, (partition,) in partitions.items():
        assert partition == (murmur2(key) & 0x7FFFFFFF) % 6


async def test_key_from_a_path_and_no_key(kafka: str, topic: str) -> None:
    await create_topic(kafka, topic, partitions=3)
    envelopes = sample_envelopes(6)
    for index, envelope in enumerate(envelopes):
        envelope.tags = {"user": f"u{index % 2}"}
    keyed = make_sink(kafka, topic, key_field="tags.user")
    unkeyed = make_sink(kafka, topic, key_field=None)
    for sink in (keyed, unkeyed):
        await sink.open()
        try:
            await write(sink, envelopes)
        finally:
            await sink.aclose()
    records = await read_records(kafka, topic, expect=12)
    assert sorted(r.key for r in records if r.key is not None) == [b"u0"] * 3 + [b"u1"] * 3
    unkeyed_records = [r for r in records if r.key is None]
    assert len(unkeyed_records) == 6
    assert len({r.partition for r in unkeyed_records}) == 1  # a keyless batch goes to one partition


async def test_topic_template_route_and_fallback(kafka: str) -> None:
    base = f"tpl{free_port()}"
    valid, invalid, other = f"{base}.conformance.valid", f"{base}.conformance.invalid", f"{base}.other"
    for name in (valid, invalid, other):
        await create_topic(kafka, name, partitions=1)
    envelopes = sample_envelopes(10)  # every 5th is invalid
    stray = sample_envelopes(1)[0]
    stray.id = "00000000-0000-4000-8000-999999999999"
    stray.schema_name = None
    sink = make_sink(kafka, base + ".{schema_name}.{route}", fallback_topic=other)
    await sink.open()
    try:
        await write(sink, [*envelopes, stray])
    finally:
        await sink.aclose()
    assert [r.key.decode() for r in await read_records(kafka, valid)] == [e.id for e in envelopes if e.valid]
    assert [r.key.decode() for r in await read_records(kafka, invalid)] == [e.id for e in envelopes if not e.valid]
    assert [r.key.decode() for r in await read_records(kafka, other)] == [stray.id]


async def test_template_characters_a_topic_cannot_hold_become_underscores(kafka: str, topic: str) -> None:
    await create_topic(kafka, f"{topic}.a_b_c", partitions=1)
    envelope = sample_envelopes(1)[0]
    envelope.tags = {"team": "a/b c"}
    sink = make_sink(kafka, topic + ".{tags.team}")
    await sink.open()
    try:
        await write(sink, [envelope])
    finally:
        await sink.aclose()
    assert len(await read_records(kafka, f"{topic}.a_b_c")) == 1


async def test_a_missing_topic_is_never_created(kafka: str, topic: str) -> None:
    sink = make_sink(kafka, topic)
    with pytest.raises(KafkaSinkError, match=f"topic '{topic}' does not exist; create it, or set create_topic"):
        await sink.open()
    # A template's topic is checked on first sight: its records fail (fatal), the others land.
    await create_topic(kafka, f"{topic}.conformance", partitions=1)
    sink = make_sink(kafka, topic + ".{schema_name}")
    await sink.open()
    try:
        good = sample_envelopes(2)
        bad = sample_envelopes(3)[2]
        bad.schema_name = "absent"
        with pytest.raises(BatchError) as raised:
            await write(sink, [good[0], bad, good[1]])
        assert raised.value.failed == [1] and not raised.value.retryable
        assert raised.value.errors is not None and "does not exist" in raised.value.errors[0]
    finally:
        await sink.aclose()
    assert [r.key.decode() for r in await read_records(kafka, f"{topic}.conformance")] == [e.id for e in good]
    names = await topic_names(kafka)
    assert topic not in names and f"{topic}.absent" not in names


async def test_create_topic_when_asked(kafka: str, topic: str) -> None:
    sink = make_sink(kafka, topic + ".{route}", create_topic={"partitions": 2, "replication_factor": 1})
    await sink.open()
    try:
        await write(sink, sample_envelopes(5))
    finally:
        await sink.aclose()
    assert len(await read_records(kafka, f"{topic}.valid", expect=4)) == 4
    assert len(await read_records(kafka, f"{topic}.invalid", expect=1)) == 1


async def test_an_event_over_max_record_bytes_fails_alone(kafka: str, topic: str) -> None:
    await create_topic(kafka, topic, partitions=1)
    envelopes = sample_envelopes(3)
    envelopes[1].payload = {"blob": "x" * 5000}
    sink = make_sink(kafka, topic, max_record_bytes=4000)
    await sink.open()
    try:
        with pytest.raises(BatchError) as raised:
            await write(sink, envelopes)
        assert raised.value.failed == [1] and not raised.value.retryable
        with pytest.raises(FatalError, match="max_record_bytes"):
            await write(sink, envelopes[1:2])
    finally:
        await sink.aclose()
    assert [r.key.decode() for r in await read_records(kafka, topic)] == [envelopes[0].id, envelopes[2].id]


async def test_unreachable_brokers_at_start_is_one_clear_line() -> None:
    port = free_port()
    sink = make_sink(f"127.0.0.1:{port}", "events", request_timeout=2)
    with pytest.raises(KafkaSinkError) as raised:
        await sink.open()
    message = str(raised.value)
    assert message.startswith(f"sink kafka: cannot reach Kafka at 127.0.0.1:{port}: KafkaConnectionError")
    assert "check `brokers`" in message and "\n" not in message


async def test_idempotence_refused_says_what_to_do(kafka: str, topic: str) -> None:
    # Tansu 0.6 refuses InitProducerId: the default (idempotent: true) fails at start with the fix in the message.
    await create_topic(kafka, topic, partitions=1)
    sink = make_sink(kafka, topic, idempotent=True)
    with pytest.raises(KafkaSinkError, match=r"refused the producer.*need idempotent: false"):
        await sink.open()


# --- config and settings: no broker needed ------------------------------------------------------------


def compile_sink(fields: str) -> Any:
    return compile_text(f"inputs: {{in: {{type: stdin}}}}\nsinks:\n  k: {{type: kafka, {fields}}}\n")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("brokers: 'a:9092', topic: 'bad topic'", "is not a topic name"),
        ("brokers: 'nohost', topic: t", "is not host:port"),
        ("brokers: 'a:1', topic: 'e.{nope}'", "'nope' is not an envelope field"),
        ("brokers: 'a:1', topic: 'e.{schema:>3}'", "without format specs"),
        ("brokers: 'a:1', topic: t, key_field: source.bogus", "the source has no field 'bogus'"),
        ("brokers: 'a:1', topic: t, headers: [schema, schema.x]", "schema has no keys to go into"),
        ("brokers: 'a:1', topic: t, fallback_topic: x", "only used with a `topic` template"),
        ("brokers: 'a:1', topic: t, tls: {cert_file: c.pem}", "give both `cert_file` and `key_file`"),
    ],
)
def test_config_problems_are_reported_at_compile_time(fields: str, message: str) -> None:
    from streamer.core.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        compile_sink(fields)


@pytest.mark.skipif(importlib.util.find_spec("cramjam") is not None, reason="cramjam is installed here")
def test_lz4_without_its_library_is_refused_with_the_pip_command() -> None:
    from streamer.core.config import ConfigError

    with pytest.raises(ConfigError, match="`lz4` compression needs cramjam: pip install cramjam"):
        compile_sink("brokers: 'a:1', topic: t, compression: lz4")


def test_brokers_as_list_or_comma_string() -> None:
    for brokers in (["a:1", "b:2"], " a:1, b:2 ,"):
        spec = msgspec.convert({"type": "kafka", "brokers": brokers, "topic": "t"}, KafkaSinkSpec)
        assert client_options(spec.connection())["bootstrap_servers"] == ["a:1", "b:2"]


def test_client_options_security() -> None:
    sasl = Sasl(mechanism="SCRAM-SHA-512", username="streamer", password="s3cret-pw")
    options = client_options(KafkaConnection(brokers="a:1", sasl=sasl, tls=Tls(verify_hostname=False)))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "streamer" and options["sasl_plain_password"] == "s3cret-pw"
    assert options["ssl_context"].check_hostname is False
    assert client_options(KafkaConnection(brokers="a:1", sasl=sasl))["security_protocol"] == "SASL_PLAINTEXT"
    assert client_options(KafkaConnection(brokers="a:1", tls=Tls()))["security_protocol"] == "SSL"
    assert client_options(KafkaConnection(brokers="a:1"))["security_protocol"] == "PLAINTEXT"


def test_the_password_is_masked_in_reprs_and_messages() -> None:
    spec = msgspec.convert(
        {"type": "kafka", "brokers": "a:1", "topic": "t",
         "sasl": {"mechanism": "PLAIN", "username": "u", "password": "s3cret-pw"}},
        KafkaSinkSpec,
    )  # fmt: skip
    assert "s3cret-pw" not in repr(spec) and "s3cret-pw" not in str(spec)
    assert "s3cret-pw" not in repr(spec.connection())
    assert "password='***'" in repr(spec.sasl)
    assert (
        describe(RuntimeError("auth failed for u:s3cret-pw"), spec.connection())
        == "RuntimeError: auth failed for u:***"
    )
