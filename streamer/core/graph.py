"""Compiling a checked spec into a :class:`~streamer.core.runtime.Pipeline`.

This is where the backend is checked: every connector lists the anyio backends
it runs on, and a pipeline that cannot run on the chosen one is refused before
anything starts, naming the connector and where it is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streamer.core.components import Context, spec_type
from streamer.core.config import ConfigError, Problem
from streamer.core.registry import SchemaResolver
from streamer.core.runtime import Pipeline, SinkWorker
from streamer.core.spec import CompiledSpec, Component

__all__ = ["build_pipeline", "check_backend"]


def _walk(components: list[Component]) -> list[Component]:
    out = []
    for component in components:
        out.append(component)
        for children in component.children.values():
            out.extend(_walk(children))
    return out


def check_backend(compiled: CompiledSpec, backend: str) -> None:
    problems: list[Problem] = []
    for component in _walk(compiled.all_components()):
        backends = component.cls.backends
        if backend not in backends:
            why = getattr(component.cls, "backend_reason", "")
            because = f" ({why})" if why else ""
            type_name = spec_type(component.spec)
            problems.append(
                compiled.document.problem(
                    (*component.path, "type"),
                    f"`{type_name}` at {'.'.join(str(p) for p in component.path)} runs only on "
                    f"{', '.join(sorted(backends))}{because}; run with --backend asyncio "
                    f"or choose another connector",
                )
            )
    if problems:
        raise ConfigError(problems)


def _instantiate(component: Component, context: Context, *, named: bool) -> Any:
    children = {
        field: [_instantiate(child, context, named=False) for child in items]
        for field, items in component.children.items()
    }
    kwargs: dict[str, Any] = {"children": children} if children else {}
    if named:
        return component.cls(component.name, component.spec, context, **kwargs)
    return component.cls(component.spec, context, **kwargs)


def build_pipeline(compiled: CompiledSpec, backend: str, *, base_dir: Path | None = None) -> Pipeline:
    """Instantiate every connector; must run inside the event loop that will run the pipeline."""
    check_backend(compiled, backend)
    resolver = SchemaResolver(
        [],
        ttl=compiled.cache.ttl,
        negative_ttl=compiled.cache.negative_ttl,
        max_entries=compiled.cache.max_entries,
        allow_remote_refs=compiled.cache.allow_remote_refs,
    )
    context = Context(pipeline=compiled.name, backend=backend, resolver=resolver, base_dir=base_dir or Path.cwd())
    resolver.use([_instantiate(c, context, named=True) for c in compiled.repositories])
    processors = [_instantiate(c, context, named=False) for c in compiled.processors]
    workers = []
    for component in compiled.sinks:
        sink = _instantiate(component, context, named=True)
        workers.append(SinkWorker(sink, component.spec.route, component.spec.delivery))
    inputs = [_instantiate(c, context, named=True) for c in compiled.inputs]
    pipeline = Pipeline(
        name=compiled.name,
        context=context,
        resolver=resolver,
        inputs=inputs,
        processors=processors,
        workers=workers,
        shutdown_timeout=compiled.runtime.shutdown_timeout,
        drain_delay=compiled.runtime.drain_delay,
    )
    return pipeline
