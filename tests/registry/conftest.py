"""Servers for the registry tests: a local HTTP server over a directory, moto's S3, PostgreSQL."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import need_service, port_open


def write_schema(root: Path, uri: str, document: Any, suffix: str = "") -> Path:
    """Write ``document`` under ``root`` in Iglu layout for ``uri`` (``iglu:v/n/f/1-0-0``)."""
    path = root / f"{uri.removeprefix('iglu:')}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document) if not isinstance(document, str) else document)
    return path


def object_schema(uri: str, **properties: Any) -> dict[str, Any]:
    """An Iglu-style schema (draft 7) whose ``self`` matches ``uri``, requiring the given properties."""
    vendor, name, fmt, version = uri.removeprefix("iglu:").split("/")
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "self": {"vendor": vendor, "name": name, "format": fmt, "version": version},
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SchemaServer:
    """A real HTTP server (``http.server`` in a thread) over a directory in Iglu layout.

    ``prefix`` is ``/schemas/`` (static repository) or ``/api/schemas/`` (Iglu Server);
    ``api_key`` makes it answer 401 without the right ``apikey`` header; ``fail_next``
    answers that many requests with 503 first; ``delay`` sleeps before answering.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api_key: str | None = None
        self.fail_next = 0
        self.delay = 0.0
        self.requests: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                if server.delay:
                    time.sleep(server.delay)
                if server.fail_next > 0:
                    server.fail_next -= 1
                    self._send(503, b'{"message": "try later"}')
                    return
                if server.api_key is not None and self.headers.get("apikey") != server.api_key:
                    self._send(401, b'{"message": "Not authorized"}')
                    return
                for prefix in ("/api/schemas/", "/schemas/"):
                    if self.path.startswith(prefix):
                        # Serve files strictly inside root, as a static host would.
                        target = (server.root / self.path[len(prefix):]).resolve()
                        if target.is_relative_to(server.root.resolve()) and target.is_file():
                            self._send(200, target.read_bytes())
                            return
                self._send(404, b'{"message": "The schema is not found"}')

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> SchemaServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def schema_server(tmp_path: Path) -> Iterator[SchemaServer]:
    root = tmp_path / "served"
    root.mkdir()
    with SchemaServer(root) as server:
        yield server


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on a free port for the whole session (``python -m moto.server``)."""
    try:
        import aiobotocore  # noqa: F401
        import moto  # noqa: F401
    except ImportError:
        need_service(False, "moto and aiobotocore", "run scripts/setup/registries.sh (pip install 'moto[server]')")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port, 0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                need_service(False, "moto_server", "run scripts/setup/registries.sh (pip install 'moto[server]')")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials for moto; never real ones."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)




