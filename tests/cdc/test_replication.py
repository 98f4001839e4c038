"""The replication client (authentication, queries, errors) and the pgoutput value conversions."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from streamer.postgres.pgoutput import Begin, Change, Commit, Decoder, converter_for, parse_array
from streamer.postgres.replication import (
    ConnectParams,
    PgConnection,
    PgConnectionError,
    PgError,
    format_lsn,
    parse_lsn,
)
from streamer.postgres.spool import StreamSpool
from tests.cdc.cluster import Cluster

pytestmark = [pytest.mark.anyio]


def test_lsn_round_trip() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    assert format_lsn(0) == "0/0"


def test_dsn_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-env")
    params = ConnectParams.from_dsn("postgresql://app@db.internal:6543/events")
    assert (params.host, params.port, params.user, params.password, params.database) == (
        "db.internal", 6543, "app", "from-env", "events"
    )  # fmt: skip
    params = ConnectParams.from_dsn("postgresql://a:p%40ss@h/d?sslmode=disable")
    assert (params.user, params.password, params.database, params.sslmode) == ("a", "p@ss", "d", "disable")


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("{}", []),
        ("{1,2,NULL}", ["1", "2", None]),
        ('{"a b","c\\"d","",NULL,"NULL"}', ["a b", 'c"d', "", None, "NULL"]),
        ("{{1,2},{3,4}}", [["1", "2"], ["3", "4"]]),
        ("[0:1]={7,8}", ["7", "8"]),
        ('{"{\\"k\\": 1}"}', ['{"k": 1}']),
    ],
)
def test_array_literals(literal: str, expected: list[object]) -> None:
    assert parse_array(literal) == expected


def test_conversions() -> None:
    assert converter_for(1007)("{1,NULL}") == [1, None]
    assert converter_for(1184)("2026-12-04 10:11:12+00") == "2026-12-04T10:11:12Z"
    assert converter_for(1184)("infinity") == "infinity"
    assert converter_for(1114)("2026-12-04 10:11:12") == "2026-12-04T10:11:12"
    assert converter_for(701)("NaN") == "NaN"
    assert converter_for(17)("\\x") == ""
    assert converter_for(1700, "number")("1e3") == 1000.0
    assert converter_for(99999)("whatever") == "whatever"  # unknown types stay text


@pytest.fixture
def password_cluster(cluster: Cluster) -> Iterator[Cluster]:
    cluster.psql("ALTER ROLE postgres PASSWORD 'secret'")
    try:
        yield cluster
    finally:
        cluster.set_hba("trust")


@pytest.mark.services
@pytest.mark.parametrize("method", ["scram-sha-256", "md5", "password"])
async def test_authentication(password_cluster: Cluster, method: str) -> None:
    cluster = password_cluster
    if method == "md5":
        cluster.psql("SET password_encryption = 'md5'; ALTER ROLE postgres PASSWORD 'secret'")
    else:
        cluster.psql("SET password_encryption = 'scram-sha-256'; ALTER ROLE postgres PASSWORD 'secret'")
    cluster.set_hba(method)
    dsn = f"postgresql://postgres:secret@127.0.0.1:{cluster.port}/postgres"
    for replication in (False, True):
        connection = await PgConnection.connect(dsn, replication=replication)
        try:
            assert (await connection.execute("SELECT 1 + 1")).rows == [["2"]]
        finally:
            await connection.aclose()
    with pytest.raises((PgError, PgConnectionError), match="password"):
        await PgConnection.connect(f"postgresql://postgres:wrong@127.0.0.1:{cluster.port}/postgres")


@pytest.mark.services
async def test_errors_and_multiple_statements(cluster: Cluster) -> None:
    connection = await PgConnection.connect(cluster.dsn)
    try:
        results = await connection.query("SELECT 1 AS a, NULL::text AS b; SELECT 'x'")
        assert [(r.columns, r.rows) for r in results] == [(["a", "b"], [["1", None]]), (["?column?"], [["x"]])]
        with pytest.raises(PgError) as caught:
            await connection.execute("SELECT * FROM missing_table")
        assert caught.value.code == "42P01"
        assert (await connection.execute("SELECT 2")).rows == [["2"]]  # usable after an error
    finally:
        await connection.aclose()


async def test_refused_connection_is_a_connection_error() -> None:
    with pytest.raises(PgConnectionError, match="cannot connect"):
        await PgConnection.connect("postgresql://postgres@127.0.0.1:1/postgres", timeout=2)


def _xlog(message: bytes) -> bytes:
    return b"w" + bytes(24) + message


def _insert(oid: int, value: str, xid: int | None = None) -> bytes:
    data = value.encode()
    body = (b"" if xid is None else struct.pack("!I", xid)) + struct.pack("!I", oid) + b"N"
    return _xlog(b"I" + body + struct.pack("!h", 1) + b"t" + struct.pack("!i", len(data)) + data)


def test_the_spool_frames_committed_streamed_transactions_and_drops_aborted_work() -> None:
    description = b"public\0t\0d" + struct.pack("!h", 1) + b"\1v\0" + struct.pack("!Ii", 25, -1)
    relation = _xlog(b"R" + struct.pack("!II", 1, 1) + description)  # in a stream block: xid 1, OID 1
    plain_relation = _xlog(b"R" + struct.pack("!I", 1) + description)  # sent again for a plain transaction

    def start(xid: int) -> bytes:
        return _xlog(b"S" + struct.pack("!IB", xid, 1))

    stop = _xlog(b"E")
    spool = StreamSpool(read_size=64)  # tiny reads: records cross block boundaries
    payloads = [
        start(1), relation, _insert(1, "a1", 1), _insert(1, "sub", 2), stop,
        start(3), _insert(1, "never", 3), stop,
        _xlog(b"B" + struct.pack("!Qqi", 50, 0, 4)), plain_relation, _insert(1, "plain"),
        _xlog(b"C" + struct.pack("!BQQq", 0, 50, 60, 0)),
        start(1), _insert(1, "a2", 1), stop,
        _xlog(b"A" + struct.pack("!II", 1, 2)),  # subtransaction 2 of 1 rolled back
        _xlog(b"A" + struct.pack("!II", 3, 3)),  # transaction 3 rolled back
        _xlog(b"c" + struct.pack("!IBQQq", 1, 0, 100, 120, 7)),
    ]  # fmt: skip
    decoder = Decoder()
    out = []
    for payload in spool.feed(payloads):
        message = decoder.decode(payload, 25)
        if isinstance(message, Change):
            out.append(message.after["v"] if message.after else None)
        elif isinstance(message, Begin | Commit):
            out.append(type(message).__name__)
    assert out == ["Begin", "plain", "Commit", "Begin", "a1", "a2", "Commit"]
    assert spool.open_transactions == 0
