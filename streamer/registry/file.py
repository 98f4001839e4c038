"""Schemas from a directory in Iglu layout: ``vendor/name/jsonschema/M-R-A`` (with or without ``.json``).

The file without extension wins when both exist. Files are read in a worker
thread, only on a cache miss. A path that resolves outside the directory (a
symlink pointing elsewhere) is treated as absent; a missing directory makes the
repository unavailable rather than "not found", since it usually means a mount
that is not there.

Example::

    registry:
      repositories:
        - type: file
          path: schemas
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import anyio
import msgspec

from streamer.core.registry import Repository, RepositorySpec, RepositoryUnavailable, SchemaKey

__all__ = ["FileRepository", "FileRepositorySpec"]


class FileRepositorySpec(RepositorySpec, tag="file", kw_only=True):
    """A local directory of schemas."""

    path: Annotated[
        str,
        msgspec.Meta(
            description="Directory holding vendor/name/format/M-R-A files; a relative path is taken from the "
            "directory streamer runs in.",
            examples=["schemas", "/etc/streamer/schemas"],
        ),
    ]


class FileRepository(Repository):
    Spec = FileRepositorySpec
    spec: FileRepositorySpec

    def __init__(self, name: str, spec: FileRepositorySpec, context: Any) -> None:
        super().__init__(name, spec, context)
        root = Path(spec.path)
        if not root.is_absolute():
            root = Path(context.base_dir) / root
        self.root = root.resolve()

    async def fetch(self, key: SchemaKey) -> bytes | None:
        return await anyio.to_thread.run_sync(self._read, key)

    def _read(self, key: SchemaKey) -> bytes | None:
        if not self.root.is_dir():
            raise RepositoryUnavailable(f"schema directory {self.root} does not exist")
        for candidate in (self.root / key.path, self.root / f"{key.path}.json"):
            resolved = candidate.resolve()
            # The URI grammar already forbids '..'; this also refuses symlinks leaving the root.
            if not resolved.is_relative_to(self.root):
                return None
            try:
                return resolved.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                continue
            except OSError as exc:
                raise RepositoryUnavailable(f"cannot read {resolved}: {exc.strerror}") from exc
        return None
