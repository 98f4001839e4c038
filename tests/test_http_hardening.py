"""HTTP input hardening: rate limits, client IP behind trusted proxies, headers never recorded."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from streamer.core.config import ConfigError
from streamer.http.client_ip import ClientIpResolver, ClientIpSpec
from streamer.http.ratelimit import RateLimiter, RateLimitSpec
from tests.support import compile_text, http_port, read_jsonl, running

EVENT = {"schema": "iglu:com.example/page_view/jsonschema/1-0-0", "data": {"url": "https://example.com/"}}


def pipeline(http_settings: str) -> str:
    return f"""
inputs:
  web:
    type: http
    port: 0
{http_settings}
    routes: [{{type: self_describing, path: /events}}, {{type: webhook}}]
registry:
  repositories: [{{type: file, path: "${{SCHEMAS}}"}}]
sinks:
  all: {{type: file, path: all.jsonl, route: all}}
"""


@pytest.mark.anyio
async def test_per_ip_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = "    rate_limit: {per_ip: 0.5, per_ip_burst: 2}"
    async with running(pipeline(settings), tmp_path) as running_pipeline:
        base = f"http://127.0.0.1:{http_port(running_pipeline)}"
        async with httpx.AsyncClient() as client:
            allowed = [await client.post(f"{base}/events", json=EVENT) for _ in range(2)]
            refused = await client.post(f"{base}/events", json=EVENT)
            hook = await client.post(f"{base}/webhook", json={})
            health = await client.get(f"{base}/health")
            ready = await client.get(f"{base}/ready")
    assert [r.status_code for r in allowed] == [200, 200]
    for response in (refused, hook):
        assert response.status_code == 429, response.text
        assert response.json()["error"] == "rate_limited"
        assert int(response.headers["retry-after"]) in (1, 2)  # one token at 0.5/s takes up to 2 s
    assert health.status_code == 200 and ready.status_code == 200  # probes are never limited
    assert len(read_jsonl(tmp_path / "all.jsonl")) == 2


@pytest.mark.anyio
async def test_per_ip_limit_counts_the_forwarded_client_and_global_limit_counts_everyone(tmp_path: Path) -> None:
    settings = (
        "    client_ip: {trusted_proxies: [127.0.0.1]}\n"
        "    rate_limit: {per_ip: 0.1, per_ip_burst: 1, global_rate: 0.1, global_burst: 3}"
    )
    async with running(pipeline(settings), tmp_path) as running_pipeline:
        url = f"http://127.0.0.1:{http_port(running_pipeline)}/events"
        async with httpx.AsyncClient() as client:

            async def post(client_ip: str) -> httpx.Response:
                return await client.post(url, json=EVENT, headers={"x-forwarded-for": client_ip})

            first_a = await post("203.0.113.1")
            second_a = await post("203.0.113.1")
            first_b = await post("203.0.113.2")
            first_c = await post("203.0.113.3")
            first_d = await post("203.0.113.4")  # its own bucket is full, but the input's is empty
    assert first_a.status_code == 200
    # A token every 10 s: the next one is 10 s away, less the time since the bucket last filled (< 1 s).
    assert (second_a.status_code, second_a.headers["retry-after"]) == (429, "10")
    assert second_a.json() == {
        "error": "rate_limited", "message": "this client address is sending too many requests; retry after 10s",
    }  # fmt: skip
    assert first_b.status_code == 200 and first_c.status_code == 200
    assert first_d.status_code == 429
    retry_after = first_d.headers["retry-after"]
    assert retry_after in ("9", "10")  # the global bucket started filling when the pipeline was built
    assert first_d.json() == {
        "error": "rate_limited",
        "message": f"this collector is receiving too many requests; retry after {retry_after}s",
    }


@pytest.mark.anyio
async def test_trusted_proxy_forwarding_headers_are_honoured(tmp_path: Path) -> None:
    settings = "    client_ip: {trusted_proxies: [127.0.0.0/8, 10.0.0.0/8]}"
    async with running(pipeline(settings), tmp_path) as running_pipeline:
        url = f"http://127.0.0.1:{http_port(running_pipeline)}/events"
        async with httpx.AsyncClient() as client:
            for headers in (
                {"x-forwarded-for": "203.0.113.7"},
                # A client-written entry left of the real client is ignored; trusted hops are skipped.
                {"x-forwarded-for": "6.6.6.6, 203.0.113.8, 10.1.2.3"},
                {"forwarded": 'for=6.6.6.6, for="[2001:db8::9]:4711";proto=https, for=10.0.0.1'},
                {"forwarded": "for=unknown, for=10.0.0.5"},
                {},
            ):
                response = await client.post(url, json=EVENT, headers=headers)
                assert response.status_code == 200, response.text
    ips = [e["source"]["client_ip"] for e in read_jsonl(tmp_path / "all.jsonl")]
    assert ips == ["203.0.113.7", "203.0.113.8", "2001:db8::9", "10.0.0.5", "127.0.0.1"]


@pytest.mark.anyio
async def test_untrusted_forwarding_headers_are_ignored(tmp_path: Path) -> None:
    settings = "    client_ip: {trusted_proxies: [10.0.0.0/8]}"
    async with running(pipeline(settings), tmp_path) as running_pipeline:
        url = f"http://127.0.0.1:{http_port(running_pipeline)}/events"
        async with httpx.AsyncClient() as client:
            spoofed = await client.post(url, json=EVENT, headers={"x-forwarded-for": "203.0.113.7"})
            forwarded = await client.post(url, json=EVENT, headers={"forwarded": "for=203.0.113.7"})
    assert spoofed.status_code == forwarded.status_code == 200
    envelopes = read_jsonl(tmp_path / "all.jsonl")
    assert [e["source"]["client_ip"] for e in envelopes] == ["127.0.0.1", "127.0.0.1"]
    # The header itself is still recorded, for whoever audits it.
    assert envelopes[0]["source"]["headers"]["x-forwarded-for"] == "203.0.113.7"


@pytest.mark.anyio
async def test_cookie_authorization_and_denied_headers_never_reach_a_sink(tmp_path: Path) -> None:
    settings = "    drop_headers: [X-Api-Key]"
    secrets = {
        "cookie": "session=cookie-secret-1",
        "authorization": "Bearer auth-secret-2",
        "proxy-authorization": "Basic proxy-secret-3",
        "x-api-key": "api-secret-4",
    }
    async with running(pipeline(settings), tmp_path) as running_pipeline:
        base = f"http://127.0.0.1:{http_port(running_pipeline)}"
        async with httpx.AsyncClient() as client:
            sd = await client.post(f"{base}/events", json=EVENT, headers={**secrets, "user-agent": "probe/1.0"})
            hook = await client.post(f"{base}/webhook", json={"a": 1}, headers=secrets)
            invalid = await client.post(f"{base}/events", json={"not": "self-describing"}, headers=secrets)
    assert sd.status_code == hook.status_code == invalid.status_code == 200
    written = (tmp_path / "all.jsonl").read_text()
    for value in ("cookie-secret-1", "auth-secret-2", "proxy-secret-3", "api-secret-4"):
        assert value not in written
    envelopes = read_jsonl(tmp_path / "all.jsonl")
    assert len(envelopes) == 3
    for envelope in envelopes:
        assert not secrets.keys() & envelope["source"]["headers"].keys()
    assert envelopes[0]["source"]["user_agent"] == "probe/1.0"
    assert envelopes[0]["source"]["headers"]["user-agent"] == "probe/1.0"


@pytest.mark.anyio
async def test_no_endpoint_echoes_config(tmp_path: Path) -> None:
    settings = "    rate_limit: {per_ip: 100}"
    async with running(pipeline(settings), tmp_path) as running_pipeline:
        base = f"http://127.0.0.1:{http_port(running_pipeline)}"
        async with httpx.AsyncClient() as client:
            for path in ("/config", "/debug", "/env", "/metrics/config", "/webhook/../config"):
                response = await client.get(f"{base}{path}")
                assert response.status_code in (404, 405), (path, response.text)
                assert "SCHEMAS" not in response.text and "trusted" not in response.text


def test_bad_trusted_proxy_is_a_config_error_with_position() -> None:
    text = "inputs:\n  web:\n    type: http\n    client_ip:\n      trusted_proxies: [10.0.0.0/8, proxy.local]\n" \
           "sinks:\n  out: {type: blackhole}\n"
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    message = str(caught.value)
    assert "test.yml:5:" in message
    assert "trusted_proxies[1] = 'proxy.local' is not an IP address or CIDR network" in message


def test_rate_limit_config_errors() -> None:
    text = "inputs:\n  web:\n    type: http\n    rate_limit: {per_ip: 0}\nsinks:\n  out: {type: blackhole}\n"
    with pytest.raises(ConfigError) as caught:
        compile_text(text)
    assert "rate_limit.per_ip" in str(caught.value)


def test_token_bucket_refills_and_memory_is_bounded() -> None:
    limiter = RateLimiter(RateLimitSpec(per_ip=1, per_ip_burst=2, max_clients=3), now=0.0)
    assert limiter.check("192.0.2.1", now=0.0) == (0, False)
    assert limiter.check("192.0.2.1", now=0.0) == (0, False)
    assert limiter.check("192.0.2.1", now=0.0) == (1, False)
    assert limiter.check("192.0.2.1", now=0.5) == (1, False)  # half a token: still wait
    assert limiter.check("192.0.2.1", now=1.0) == (0, False)  # refilled one token
    for n in range(10_000):
        limiter.check(f"198.51.100.{n % 250}.{n}", now=2.0)
    assert len(limiter._clients) == 3  # bounded: least recently seen are forgotten
    # IPv6 clients share one bucket per /64.
    v6 = RateLimiter(RateLimitSpec(per_ip=1, per_ip_burst=1), now=0.0)
    assert v6.check("2001:db8:1:2::1", now=0.0) == (0, False)
    assert v6.check("2001:db8:1:2::ffff", now=0.0) == (1, False)
    assert v6.check("2001:db8:1:3::1", now=0.0) == (0, False)


def test_refused_requests_take_no_token() -> None:
    limiter = RateLimiter(RateLimitSpec(per_ip=1, per_ip_burst=1, global_rate=1, global_burst=1), now=0.0)
    assert limiter.check("192.0.2.1", now=0.0) == (0, False)
    assert limiter.check("192.0.2.2", now=0.0) == (1, True)  # global empty; 192.0.2.2 keeps its token
    assert limiter.check("192.0.2.2", now=1.0) == (0, False)


def test_client_ip_resolution_rules() -> None:
    resolver = ClientIpResolver(ClientIpSpec(trusted_proxies=["10.0.0.0/8", "::1"]))
    assert resolver.resolve("192.0.2.1", {"x-forwarded-for": "1.1.1.1"}) == "192.0.2.1"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "1.1.1.1"}) == "1.1.1.1"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "1.1.1.1, 10.0.0.2"}) == "1.1.1.1"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "10.0.0.3, 10.0.0.2"}) == "10.0.0.3"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "1.1.1.1:5555"}) == "1.1.1.1"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "[2001:db8::1]:80"}) == "2001:db8::1"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "garbage"}) == "10.0.0.1"
    assert resolver.resolve("10.0.0.1", {"x-forwarded-for": "garbage, 10.0.0.7"}) == "10.0.0.7"
    assert resolver.resolve("10.0.0.1", {}) == "10.0.0.1"
    assert resolver.resolve("::ffff:10.0.0.1", {"x-forwarded-for": "1.1.1.1"}) == "1.1.1.1"
    assert resolver.resolve("::1", {"forwarded": 'for="_hidden", for=1.1.1.1;by=x'}) == "1.1.1.1"
    # Forwarded wins over X-Forwarded-For when both are sent.
    assert resolver.resolve("::1", {"forwarded": "for=2.2.2.2", "x-forwarded-for": "3.3.3.3"}) == "2.2.2.2"
    untrusting = ClientIpResolver(ClientIpSpec())
    assert untrusting.resolve("10.0.0.1", {"x-forwarded-for": "1.1.1.1"}) == "10.0.0.1"
