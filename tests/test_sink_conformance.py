"""The sink conformance suite (streamer.testing) run against the built-in file sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamer.core.components import Context, Sink
from streamer.core.registry import SchemaResolver
from streamer.sinks.file import FileSink, FileSinkSpec
from streamer.testing import SinkConformance


def _context(base: Path) -> Context:
    return Context(pipeline="conformance", backend="asyncio", resolver=SchemaResolver([]), base_dir=base)


class TestFileSinkConformance(SinkConformance):
    @pytest.fixture(params=["never", "batch"])
    def destination(self, request: pytest.FixtureRequest, tmp_path: Path) -> Any:
        return (tmp_path / "out" / "events.jsonl", request.param)

    async def open_sink(self, destination: Any) -> Sink:
        path, fsync = destination
        sink = FileSink("file", FileSinkSpec(path=str(path), fsync=fsync), _context(path.parent))
        await sink.open()
        return sink

    async def read_back(self, destination: Any) -> list[dict[str, Any]]:
        path, _ = destination
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    async def open_broken_sink(self, destination: Any) -> Sink:
        path, fsync = destination
        path.parent.mkdir(parents=True, exist_ok=True)
        blocker = path.parent / "not-a-directory"
        blocker.write_text("")
        # Its directory is a regular file: every open fails, as on a lost mount.
        return FileSink("file", FileSinkSpec(path=str(blocker / "events.jsonl"), fsync=fsync), _context(path.parent))
