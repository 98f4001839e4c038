"""The sink conformance suite (streamer.testing) run against the postgres sink, both ways it writes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from streamer.core.components import Sink
from streamer.postgres.sink import PostgresSink
from streamer.testing import SinkConformance
from tests.postgres.helpers import make_sink, read_rows
from tests.support import TcpProxy

pytestmark = pytest.mark.services


class _PostgresConformance(SinkConformance):
    ordered = False  # a table has no order; rows are compared as sets (with their multiplicity)
    on_conflict: ClassVar[str]
    keyed: ClassVar[bool]

    @pytest.fixture
    async def destination(self, db: Any) -> AsyncIterator[tuple[str, Any]]:
        name = f"conformance_{uuid.uuid4().hex[:10]}"
        statement = make_sink("postgresql://x@localhost/x", name).create_statement()
        if not self.keyed:
            statement = statement.replace(', PRIMARY KEY ("id")', "")
        await db.execute(statement)
        proxies: list[TcpProxy] = []
        try:
            yield name, db, proxies
        finally:
            for proxy in proxies:
                await proxy.stop()
            await db.execute(f'DROP TABLE IF EXISTS "{name}"')

    async def open_sink(self, destination: Any) -> Sink:
        name, _, _ = destination
        sink = make_sink("postgresql://postgres@127.0.0.1:5432/test", name, on_conflict=self.on_conflict)
        await sink.open()
        assert sink.ignore_conflicts == (self.on_conflict == "ignore")
        return sink

    async def read_back(self, destination: Any) -> list[dict[str, Any]]:
        name, db, _ = destination
        return await read_rows(db, name)

    async def open_broken_sink(self, destination: Any) -> Sink:
        # Through a proxy that is cut once the sink is open: the server "goes away" mid-run.
        name, _, proxies = destination
        proxy = TcpProxy(5432)
        await proxy.start()
        proxies.append(proxy)
        sink: PostgresSink = make_sink(
            f"postgresql://postgres@127.0.0.1:{proxy.port}/test", name, on_conflict=self.on_conflict,
            connect_timeout=2,
        )  # fmt: skip
        await sink.open()
        proxy.cut()
        return sink


class TestIdempotentCopy(_PostgresConformance):
    """on_conflict: ignore on a keyed table: COPY into a staging table, INSERT ... ON CONFLICT DO NOTHING."""

    idempotent = True
    on_conflict = "ignore"
    keyed = True


class TestPlainCopy(_PostgresConformance):
    """on_conflict: none on a table without a key: COPY straight into it (a rewrite lands twice)."""

    idempotent = False
    on_conflict = "none"
    keyed = False
