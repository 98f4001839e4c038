"""Per-client and global request rate limits: token buckets, O(1) per request, bounded memory.

Each client address has a bucket holding up to ``per_ip_burst`` tokens that
refills at ``per_ip`` tokens per second; a request takes one token, and a
request finding none is refused with 429 and a ``Retry-After`` saying when a
token will be there. One more bucket (``global_rate`` / ``global_burst``) caps
the whole input. IPv6 clients are counted per ``/64`` (one host usually owns a
whole /64, so counting single addresses would let it rotate past the limit).

The client buckets live in a dict kept in least-recently-used order and capped
at ``max_clients``: a full table forgets the client idle the longest, whose
bucket would be full again by now in all likelihood.

Example::

    inputs:
      web:
        type: http
        rate_limit:
          per_ip: 20
          per_ip_burst: 40
          global_rate: 2000
"""

from __future__ import annotations

import ipaddress
import math
import time
from typing import Annotated

import msgspec

__all__ = ["RateLimitSpec", "RateLimiter"]


_Rate = Annotated[float, msgspec.Meta(gt=0)]
_Burst = Annotated[int, msgspec.Meta(ge=1)]


class RateLimitSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Token-bucket request limits; a refused request gets 429 with Retry-After."""

    per_ip: Annotated[
        _Rate | None,
        msgspec.Meta(description="Requests per second each client address may sustain; null for no limit.",
                     examples=[20]),
    ] = None
    per_ip_burst: Annotated[
        _Burst | None,
        msgspec.Meta(description="Requests a client may send at once before `per_ip` applies; "
                     "default: twice `per_ip`, at least 1."),
    ] = None
    global_rate: Annotated[
        _Rate | None,
        msgspec.Meta(description="Requests per second the whole input accepts; null for no limit.",
                     examples=[5000]),
    ] = None
    global_burst: Annotated[
        _Burst | None,
        msgspec.Meta(description="Requests accepted at once before `global_rate` applies; "
                     "default: twice `global_rate`, at least 1."),
    ] = None
    max_clients: Annotated[
        int,
        msgspec.Meta(ge=1, description="Client addresses tracked at most (about 100 bytes each); "
                     "the least recently seen is forgotten first."),
    ] = 100_000


class _Bucket:
    __slots__ = ("last", "tokens")

    def __init__(self, tokens: float, last: float) -> None:
        self.tokens = tokens
        self.last = last


def _burst(rate: float, burst: int | None) -> float:
    return float(burst) if burst is not None else max(1.0, 2.0 * rate)


class RateLimiter:
    """Decides whether a request may proceed; ``check`` returns 0 or the seconds to wait."""

    __slots__ = ("_clients", "_global", "_global_burst", "_global_rate", "_ip_burst", "_ip_rate", "_max", "enabled",
                 "per_ip_enabled")

    def __init__(self, spec: RateLimitSpec, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._ip_rate = spec.per_ip or 0.0
        self._ip_burst = _burst(self._ip_rate, spec.per_ip_burst)
        self._global_rate = spec.global_rate or 0.0
        self._global_burst = _burst(self._global_rate, spec.global_burst)
        self._global = _Bucket(self._global_burst, now)
        self._clients: dict[str, _Bucket] = {}
        self._max = spec.max_clients
        self.per_ip_enabled = spec.per_ip is not None
        self.enabled = self.per_ip_enabled or spec.global_rate is not None

    @staticmethod
    def key(client_ip: str) -> str:
        """The bucket key of an address: itself for IPv4, its /64 network for IPv6."""
        if ":" not in client_ip:
            return client_ip
        try:
            network = ipaddress.IPv6Network((client_ip, 64), strict=False)
        except ValueError:
            return client_ip
        return str(network)

    def check(self, client_ip: str | None, now: float | None = None) -> tuple[int, bool]:
        """Take a token for one request: ``(0, _)`` when allowed, else ``(retry_after, is_global)``.

        A refused request takes no token from any bucket.
        """
        if now is None:
            now = time.monotonic()
        bucket = None
        if self.per_ip_enabled and client_ip is not None:
            clients = self._clients
            key = self.key(client_ip)
            bucket = clients.pop(key, None)
            if bucket is None:
                if len(clients) >= self._max:
                    clients.pop(next(iter(clients)))  # least recently seen: dicts keep insertion order
                bucket = _Bucket(self._ip_burst, now)
            clients[key] = bucket  # (re)insert at the end: most recently seen
            bucket.tokens = min(self._ip_burst, bucket.tokens + (now - bucket.last) * self._ip_rate)
            bucket.last = now
            if bucket.tokens < 1.0:
                return math.ceil((1.0 - bucket.tokens) / self._ip_rate), False
        if self._global_rate:
            shared = self._global
            shared.tokens = min(self._global_burst, shared.tokens + (now - shared.last) * self._global_rate)
            shared.last = now
            if shared.tokens < 1.0:
                return math.ceil((1.0 - shared.tokens) / self._global_rate), True
            shared.tokens -= 1.0
        if bucket is not None:
            bucket.tokens -= 1.0
        return 0, False
