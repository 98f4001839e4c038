"""An HTTP input that cannot listen: one log line naming the input, the address and the way out; exit 1.

Run through the CLI in a subprocess, on both backends (asyncio's transports server and the anyio
streams server bind through the same helper).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT

STREAMER = str(Path(sys.executable).with_name("streamer"))
HINT = (
    "choose another with port: (the example pipelines read STREAMER_PORT, "
    "e.g. STREAMER_PORT=8081 streamer run pipelines/quickstart.yml)"
)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def run(tmp_path: Path, backend: str, pipeline: Path, **environ: str) -> subprocess.CompletedProcess[str]:
    # The example pipelines read ./schemas and write ./out: run them from a scratch directory.
    if not (tmp_path / "schemas").exists():
        (tmp_path / "schemas").symlink_to(ROOT / "schemas")
    return subprocess.run(
        [STREAMER, "run", "--backend", backend, str(pipeline)],
        cwd=tmp_path,
        env={**os.environ, **environ},
        capture_output=True,
        text=True,
        timeout=60,
    )


def log_messages(stderr: str) -> list[str]:
    """The messages of the log lines (after ``LEVEL name: ``)."""
    return [line.split(": ", 1)[1] for line in stderr.splitlines() if " ERROR " in line or " WARNING " in line]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_busy_port_names_the_input_and_how_to_choose_another(
    tmp_path: Path, busy_port: int, backend: str
) -> None:
    result = run(tmp_path, backend, ROOT / "pipelines" / "quickstart.yml", STREAMER_PORT=str(busy_port))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert log_messages(result.stderr) == [
        f"pipeline failed: input web: cannot listen on 127.0.0.1:{busy_port}: the port is already in use; {HINT}"
    ]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_an_address_not_of_this_machine_is_named_too(tmp_path: Path, backend: str) -> None:
    pipeline = tmp_path / "p.yml"
    pipeline.write_text(
        """
inputs:
  collector:
    type: http
    host: 192.0.2.1   # TEST-NET-1: never a local address
    port: 8080
sinks:
  out: {type: file, path: out.jsonl}
"""
    )
    result = run(tmp_path, backend, pipeline)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert log_messages(result.stderr) == [
        "pipeline failed: input collector: cannot listen on 192.0.2.1:8080: the address is not one of this machine's"
    ]


def test_every_example_pipeline_reads_its_port_from_streamer_port() -> None:
    for pipeline in sorted((ROOT / "pipelines").glob("*.yml")):
        text = pipeline.read_text()
        if "type: http" in text:
            assert "port: ${STREAMER_PORT:-8080}" in text, pipeline.name
