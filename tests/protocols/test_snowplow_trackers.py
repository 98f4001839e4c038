"""Real Snowplow trackers against the collector: the PyPI Python tracker and the npm browser tracker.

The browser test loads ``@snowplow/browser-tracker``'s UMD bundle in headless Debian Chromium from a page
served on another port than the collector, so the CORS preflight, the credentialed POST and the identity
cookie are exercised as on a real site. ``scripts/setup/browser.sh`` installs Chromium and the bundle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.support import http_port, need_service, read_jsonl, running

pytestmark = pytest.mark.anyio

BUTTON = "iglu:com.example/button_click/jsonschema/1-0-0"
USER = "iglu:com.example/user/jsonschema/1-0-0"
WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0"
ATOMIC = "iglu:io.streamer/snowplow_event/jsonschema/1-0-0"
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
BUNDLE = BROWSER_DIR / "node_modules" / "@snowplow" / "browser-tracker" / "dist" / "index.umd.min.js"

PIPELINE = """
inputs:
  web:
    type: http
    port: 0
    cors: {allow_origins: ["${PAGE_ORIGIN:-https://www.example.com}"]}
    cookie: {name: sp}
    routes: [{type: snowplow}]
registry:
  repositories: [{type: file, path: "${SCHEMAS}"}]
sinks:
  valid: {type: file, path: valid.jsonl, route: valid}
  invalid: {type: file, path: invalid.jsonl, route: invalid}
"""


def _by_type(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["atomic"]["e"]: e for e in events}


# The Python tracker (PyPI snowplow-tracker) -------------------------------------------------------------


def _track_with_python(port: int, method: str) -> list[Any]:
    """Send a page view, a structured event and a self-describing event with two contexts; return failures."""
    from snowplow_tracker import (
        Emitter,
        PageView,
        SelfDescribing,
        SelfDescribingJson,
        StructuredEvent,
        Subject,
        Tracker,
    )

    failures: list[Any] = []
    emitter = Emitter(
        "127.0.0.1",
        protocol="http",
        port=port,
        method=method,  # type: ignore[arg-type]
        batch_size=10,
        on_failure=lambda sent, unsent: failures.append((sent, unsent)),
    )
    subject = Subject().set_user_id("user-7").set_platform("srv")
    tracker = Tracker(namespace="py", emitters=emitter, subject=subject, app_id="py-test")
    tracker.track(PageView(page_url="https://shop.example.com/", page_title="Shop", referrer="https://a.example/"))
    tracker.track(StructuredEvent(category="shop", action="add-to-basket", label="sku-1", value=2))
    tracker.track(
        SelfDescribing(
            SelfDescribingJson(BUTTON, {"id": "buy", "label": "Buy", "position": 3}),
            context=[
                SelfDescribingJson(USER, {"user_id": "u-1", "plan": "pro"}),
                SelfDescribingJson(USER, {"user_id": "u-2", "plan": "free"}),
            ],
            true_timestamp=1_700_000_000_000,
        )
    )
    tracker.flush()
    return failures


@pytest.mark.parametrize("method", ["get", "post"])
async def test_python_tracker_events_arrive_valid(tmp_path: Path, method: str) -> None:
    need_service(
        importlib.util.find_spec("snowplow_tracker") is not None,
        "the snowplow-tracker package",
        "install the test extra: .venv/bin/pip install -e '.[test]' (or pip install snowplow-tracker)",
    )
    async with running(PIPELINE, tmp_path) as pipeline:
        failures = await anyio.to_thread.run_sync(partial(_track_with_python, http_port(pipeline), method))
    assert failures == []
    assert read_jsonl(tmp_path / "invalid.jsonl") == []
    valid = read_jsonl(tmp_path / "valid.jsonl")
    assert len(valid) == 3
    events = _by_type(valid)
    assert set(events) == {"pv", "se", "ue"}
    for event in valid:
        assert event["protocol"] == "snowplow"
        assert event["atomic"]["aid"] == "py-test"
        assert event["atomic"]["p"] == "srv"
        assert event["atomic"]["uid"] == "user-7"
        assert event["atomic"]["tv"].startswith("py-")
        assert event["event_tstamp"] is not None
        assert event["source"]["metadata"]["network_user_id"]
    page_view = events["pv"]
    assert page_view["schema"] == ATOMIC
    assert page_view["payload"]["url"] == "https://shop.example.com/"
    assert page_view["payload"]["page"] == "Shop"
    assert events["se"]["schema"] == ATOMIC
    assert (events["se"]["payload"]["se_ca"], events["se"]["payload"]["se_ac"]) == ("shop", "add-to-basket")
    ue = events["ue"]
    assert ue["schema"] == BUTTON
    assert ue["payload"] == {"id": "buy", "label": "Buy", "position": 3}
    assert ue["contexts"] == [
        {"schema": USER, "data": {"user_id": "u-1", "plan": "pro"}},
        {"schema": USER, "data": {"user_id": "u-2", "plan": "free"}},
    ]
    assert ue["event_tstamp"] == "2023-11-14T22:13:20Z"  # the true timestamp (ttm)
    assert "ue_px" not in ue["atomic"] and "cx" not in ue["atomic"]


# The browser tracker (npm @snowplow/browser-tracker) in headless Chromium -------------------------------


class _PageHandler(SimpleHTTPRequestHandler):
    """Serves tests/protocols/browser; a POST to /report hands the page's outcome to the test."""

    reports: queue.Queue[dict[str, Any]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, directory=str(BROWSER_DIR), **kwargs)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        self.send_response(204)
        self.end_headers()
        if self.path == "/report":
            self.reports.put(json.loads(body))

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PageServer:
    def __init__(self) -> None:
        self.reports: queue.Queue[dict[str, Any]] = queue.Queue()
        handler = type("Handler", (_PageHandler,), {"reports": self.reports})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _PageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def page_server() -> Iterator[_PageServer]:
    with _PageServer() as server:
        yield server


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # one backend: a browser start is the slow part
async def test_browser_tracker_in_chromium(tmp_path: Path, page_server: _PageServer) -> None:
    chromium = _chromium()
    need_service(chromium is not None, "chromium", "run scripts/setup/browser.sh (apt-get install chromium)")
    need_service(BUNDLE.exists(), "@snowplow/browser-tracker", "run scripts/setup/browser.sh (npm install)")
    assert chromium is not None
    origin = f"http://127.0.0.1:{page_server.port}"
    async with running(PIPELINE, tmp_path, {"PAGE_ORIGIN": origin}) as pipeline:
        collector = f"http://127.0.0.1:{http_port(pipeline)}"
        profile = tmp_path / "chromium-profile"
        command = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-quic",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            f"--user-data-dir={profile}",
            f"{origin}/page.html?collector={collector}",
        ]
        log = tmp_path / "chromium.log"
        with log.open("wb") as sink:
            browser = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ})
            try:
                report = await _wait_for_report(page_server.reports, browser, timeout=40)
            finally:
                browser.terminate()
                try:
                    await anyio.to_thread.run_sync(partial(browser.wait, 10))
                except subprocess.TimeoutExpired:
                    browser.kill()
                    browser.wait()
        assert report is not None, f"the page never reported; chromium log:\n{log.read_text()[-4000:]}"
        assert report["error"] is None, report
        assert report["results"] == [{"ok": True, "events": 1}, {"ok": True, "events": 1}], report
    assert read_jsonl(tmp_path / "invalid.jsonl") == []
    valid = read_jsonl(tmp_path / "valid.jsonl")
    events = _by_type(valid)
    assert set(events) == {"pv", "ue"}, valid
    page_view, click = events["pv"], events["ue"]
    for event in (page_view, click):
        headers = event["source"]["headers"]
        # A cross-origin JSON POST: the browser sent it only after the collector approved the preflight.
        assert headers["origin"] == origin
        assert headers["content-type"].startswith("application/json")
        assert "cookie" not in headers
        assert event["atomic"]["aid"] == "browser-test"
        assert event["atomic"]["tv"].startswith("js-")
        assert event["contexts"][-1]["schema"] == WEB_PAGE
    assert page_view["schema"] == ATOMIC
    assert page_view["payload"]["url"].startswith(f"{origin}/page.html")
    assert page_view["payload"]["page"] == "Browser test page"
    assert click["schema"] == BUTTON
    assert click["payload"] == {"id": "buy", "label": "Buy now", "position": 2}
    assert [c["data"] for c in click["contexts"] if c["schema"] == USER] == [
        {"user_id": "u-1", "plan": "pro"},
        {"user_id": "u-2", "plan": "free"},
    ]
    # The first answer set the identity cookie; the browser sent it back with the second request.
    first_id = page_view["source"]["metadata"]["network_user_id"]
    assert click["source"]["metadata"]["network_user_id"] == first_id


async def _wait_for_report(
    reports: queue.Queue[dict[str, Any]], browser: subprocess.Popen[bytes], timeout: float
) -> dict[str, Any] | None:
    with anyio.move_on_after(timeout):
        while True:
            try:
                return reports.get_nowait()
            except queue.Empty:
                pass
            if browser.poll() is not None:
                return None
            await anyio.sleep(0.05)
    return None
