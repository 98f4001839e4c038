"""Finding connectors by type name without importing the ones a pipeline does not use.

A :class:`Catalog` maps (kind, type name) to ``"module:attribute"``. Built-in
connectors are listed in :mod:`streamer.connectors`; third-party packages add
theirs through the ``streamer.connectors`` entry-point group, naming each entry
``kind.type`` (for example ``sink.clickhouse = "acme_streamer.clickhouse:ClickHouseSink"``).
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any, Literal

__all__ = ["KINDS", "Catalog", "Kind", "UnknownConnector"]

Kind = Literal["input", "processor", "sink", "repository", "route"]
KINDS: tuple[Kind, ...] = ("input", "processor", "sink", "repository", "route")
ENTRY_POINT_GROUP = "streamer.connectors"


class UnknownConnector(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        super().__init__(f"unknown {kind} type `{name}`{hint} (known: {', '.join(sorted(known))})")


class Catalog:
    """Connector classes by kind and type name, plus those every pipeline gets without asking.

    ``implicit`` names, per kind, types added to every pipeline that does not configure
    them itself (the built-in schema repository), built from their spec's defaults.
    """

    def __init__(
        self,
        table: dict[str, dict[str, str]],
        *,
        implicit: dict[str, list[str]] | None = None,
        load_entry_points: bool = True,
    ) -> None:
        self._table = {kind: dict(table.get(kind, {})) for kind in KINDS}
        self._implicit = {kind: list((implicit or {}).get(kind, [])) for kind in KINDS}
        if load_entry_points:
            for entry in entry_points(group=ENTRY_POINT_GROUP):
                kind, _, name = entry.name.partition(".")
                if kind in self._table and name:
                    self._table[kind].setdefault(name, entry.value)

    def implicit(self, kind: Kind) -> list[str]:
        return list(self._implicit[kind])

    def names(self, kind: Kind) -> list[str]:
        return sorted(self._table[kind])

    def load(self, kind: Kind, name: str) -> Any:
        target = self._table[kind].get(name)
        if target is None:
            raise UnknownConnector(kind, name, self.names(kind))
        module_name, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)

    def load_all(self, kind: Kind) -> list[Any]:
        return [self.load(kind, name) for name in self.names(kind)]
