"""Compiling a checked spec into a :class:`~streamer.core.runtime.Pipeline`.

This is where a pipeline is checked against the machine it is to run on: every
connector lists the anyio backends it runs on and the optional packages it needs
(``requires``, installed by the ``extra``), and a pipeline that cannot run on the
chosen backend or lacks a package is refused before anything starts, naming the
connector, where it is written and what to do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from streamer.core.components import Context, spec_type
from streamer.core.config import ConfigError, Problem
from streamer.core.registry import SchemaResolver
from streamer.core.runtime import Pipeline, SinkWorker
from streamer.core.spec import CompiledSpec, Component

__all__ = ["build_pipeline", "check_backend", "check_pipeline", "check_requirements", "missing_modules"]


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


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """Those of ``modules`` that cannot be imported here (looked up, not imported)."""
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken install
            found = False
        if not found:
            missing.append(module)
    return missing


def check_requirements(compiled: CompiledSpec) -> None:
    """Refuse a pipeline whose connectors need packages that are not installed, with the install command."""
    problems: list[Problem] = []
    for component in _walk(compiled.all_components()):
        missing = missing_modules(getattr(component.cls, "requires", ()))
        if not missing:
            continue
        extra = getattr(component.cls, "extra", None)
        how = f"pip install 'streamer[{extra}]'" if extra else f"pip install {' '.join(missing)}"
        type_name = spec_type(component.spec)
        problems.append(
            compiled.document.problem(
                (*component.path, "type"),
                f"`{type_name}` at {'.'.join(str(p) for p in component.path)} needs "
                f"{', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: {how}",
            )
        )
    if problems:
        raise ConfigError(problems)


def check_pipeline(compiled: CompiledSpec, backend: str) -> None:
    """Everything :func:`check_backend` and :func:`check_requirements` refuse, reported together."""
    problems: list[Problem] = []
    try:
        check_backend(compiled, backend)
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        check_requirements(compiled)
    except ConfigError as exc:
        problems.extend(exc.problems)
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
    check_pipeline(compiled, backend)
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
    by_name = {worker.name: worker for worker in workers}
    for worker in workers:
        if worker.settings.dead_letter is not None:
            worker.use_dead_letter(by_name[worker.settings.dead_letter])
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
