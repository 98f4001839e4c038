"""The ``streamer`` command: run, lint, schema, version."""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from streamer import __version__
from streamer.core.config import ConfigError, interpolate, read_document
from streamer.core.spec import CompiledSpec, compile_document, pipeline_schema

__all__ = ["main"]

EXIT_CONFIG = 1


def _compile(file: str) -> CompiledSpec:
    from streamer.connectors import default_catalog

    document = read_document(file)
    problems = interpolate(document)
    if problems:
        raise ConfigError(problems)
    return compile_document(document, default_catalog())


def _lint(args: argparse.Namespace) -> int:
    from streamer.core.graph import check_pipeline

    failed = False
    for file in args.files:
        try:
            compiled = _compile(file)
            check_pipeline(compiled, args.backend)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            failed = True
            continue
        print(f"{file}: ok", file=sys.stderr)
    return EXIT_CONFIG if failed else 0


async def _run_pipeline(compiled: CompiledSpec, backend: str) -> int:
    from streamer.core.graph import build_pipeline

    pipeline = build_pipeline(compiled, backend)
    tune_gc(compiled.runtime.gc_threshold)
    return await pipeline.run(handle_signals=True)


def tune_gc(threshold: int) -> None:
    """Collect the young generation every `threshold` allocations instead of Python's 700.

    Objects that exist once the pipeline is built (modules, compiled specs, validators) are
    frozen first so that full collections do not keep walking them. 0 leaves the collector as
    it is.
    """
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)


def _backend_options(backend: str) -> dict[str, Any]:
    if backend == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return {}
        return {"use_uvloop": True}
    return {}


def _run(args: argparse.Namespace) -> int:
    import anyio

    from streamer.core.graph import check_pipeline

    try:
        compiled = _compile(args.file)
        check_pipeline(compiled, args.backend)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.backend == "trio":
        try:
            import trio  # noqa: F401
        except ImportError:
            print("streamer: the trio backend needs trio: pip install 'streamer[trio]'", file=sys.stderr)
            return EXIT_CONFIG
    try:
        return anyio.run(
            functools.partial(_run_pipeline, compiled, args.backend),
            backend=args.backend,
            backend_options=_backend_options(args.backend),
        )
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        logging.getLogger("streamer").error("pipeline failed: %s", _describe(exc))
        return 1


def _describe(exc: BaseException) -> str:
    from streamer.core.errors import StartupError

    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, StartupError):
        return str(exc)  # written for the operator: the exception's class adds nothing
    return f"{type(exc).__name__}: {exc}"


def _schema(args: argparse.Namespace) -> int:
    from streamer.connectors import default_catalog

    print(json.dumps(pipeline_schema(default_catalog()), indent=2, sort_keys=False))
    return 0


def _version(args: argparse.Namespace) -> int:
    print(f"streamer {__version__}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamer", description="Event collector and stream processor.")
    commands = parser.add_subparsers(dest="command", required=True)
    backend = argparse.ArgumentParser(add_help=False)
    backend.add_argument(
        "--backend",
        choices=["asyncio", "trio"],
        default=os.environ.get("STREAMER_BACKEND", "asyncio"),
        help="anyio backend (default asyncio, with uvloop when installed)",
    )

    run = commands.add_parser("run", parents=[backend], help="run a pipeline until it ends or is signalled")
    run.add_argument("file", help="pipeline YAML file")
    run.add_argument("--log-level", default=os.environ.get("STREAMER_LOG_LEVEL", "info"))
    run.set_defaults(handler=_run)

    lint = commands.add_parser("lint", parents=[backend], help="check pipeline files without running them")
    lint.add_argument("files", nargs="+", metavar="file")
    lint.set_defaults(handler=_lint)

    schema = commands.add_parser("schema", help="print the pipeline config JSON Schema")
    schema.set_defaults(handler=_schema)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
