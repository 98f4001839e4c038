"""Schemas over HTTP(S): a static Iglu repository, or the Iglu Server API.

A static repository (``api: static``, the default) serves
``{url}/schemas/vendor/name/format/M-R-A`` — Iglu Central, a bucket website, any
web server over a directory in Iglu layout. The Iglu Server API (``api:
iglu_server``) serves ``{url}/api/schemas/vendor/name/format/M-R-A`` and takes
its key in the ``apikey`` header.

A 404 means "not here" and the next repository is asked. Connection errors,
timeouts, 429 and 5xx are retried ``retries`` times with a doubling backoff,
then the repository counts as down. 401/403 (a refused key) and other
answers are not retried: they make it unavailable at once, with the status in
the error. Needs ``httpx`` (``pip install 'streamer[registry-http]'``); runs on
asyncio and trio.

Example::

    registry:
      repositories:
        - type: http
          name: central
          url: http://iglucentral.com
          priority: 10
        - type: http
          name: ours
          url: https://iglu.example.com
          api: iglu_server
          api_key: ${IGLU_API_KEY}
          vendor_prefixes: [com.example]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import anyio
import msgspec

from streamer.core.config import PathT
from streamer.core.registry import Repository, RepositorySpec, RepositoryUnavailable, SchemaKey

__all__ = ["HttpRepository", "HttpRepositorySpec"]

_MAX_SCHEMA_BYTES = 4 * 1_048_576
_RETRIED = frozenset({408, 425, 429, 500, 502, 503, 504})


class HttpRepositorySpec(RepositorySpec, tag="http", kw_only=True):
    """A static Iglu repository or an Iglu Server, over HTTP(S)."""

    url: Annotated[
        str,
        msgspec.Meta(
            description="Base URL of the repository, without `/schemas` or `/api`.",
            examples=["http://iglucentral.com", "https://iglu.example.com"],
        ),
    ]
    api: Annotated[
        Literal["static", "iglu_server"],
        msgspec.Meta(
            description="`static`: GET {url}/schemas/<path>; `iglu_server`: GET {url}/api/schemas/<path> "
            "with the `apikey` header.",
            examples=["static", "iglu_server"],
        ),
    ] = "static"
    api_key: Annotated[
        str | None,
        msgspec.Meta(
            description="Iglu Server API key, sent in the `apikey` header (never logged).",
            examples=["${IGLU_API_KEY}"],
        ),
    ] = None
    headers: Annotated[
        dict[str, str],
        msgspec.Meta(
            description="Extra request headers, for example an Authorization header for a private static repository.",
            examples=[{"authorization": "Bearer ${SCHEMA_TOKEN}"}],
        ),
    ] = msgspec.field(default_factory=dict)
    suffix: Annotated[
        str,
        msgspec.Meta(description="Appended to each schema path, for repositories that store `.json` files.",
                     examples=["", ".json"]),
    ] = ""
    timeout: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds allowed for each request (connect, send, read).", examples=[5])
    ] = 5.0
    retries: Annotated[
        int, msgspec.Meta(ge=0, description="Retries after a failed request before the repository counts as down.",
                          examples=[2])
    ] = 2
    retry_backoff: Annotated[
        float, msgspec.Meta(gt=0, description="Seconds before the first retry; doubles each time.", examples=[0.2])
    ] = 0.2

    def check(self) -> Iterator[tuple[PathT, str]]:
        if not self.url.startswith(("http://", "https://")):
            yield ("url",), f"`url` must start with http:// or https://, got {self.url!r}"
        if "?" in self.url or "#" in self.url:
            yield ("url",), "`url` is the repository's base URL: no query string or fragment"
        if self.api == "iglu_server" and not self.api_key:
            yield ("api_key",), "an Iglu Server needs `api_key` (for example api_key: ${IGLU_API_KEY})"
        if self.suffix and not all(c.isalnum() or c in "._-" for c in self.suffix):
            yield ("suffix",), "`suffix` may hold only letters, digits, '.', '_' and '-'"


class HttpRepository(Repository):
    Spec = HttpRepositorySpec
    spec: HttpRepositorySpec
    requires = ("httpx",)
    extra = "registry-http"

    def __init__(self, name: str, spec: HttpRepositorySpec, context: Any) -> None:
        super().__init__(name, spec, context)
        base = spec.url.rstrip("/")
        self.base = f"{base}/api/schemas/" if spec.api == "iglu_server" else f"{base}/schemas/"
        # Errors show the URL; credentials written into it (https://user:pass@host) must not be.
        scheme, _, rest = self.base.partition("://")
        host, slash, path = rest.partition("/")
        self._shown_base = f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"
        self._headers = {"accept": "application/json", **{k.lower(): v for k, v in spec.headers.items()}}
        if spec.api_key:
            self._headers["apikey"] = spec.api_key
        self._client: Any = None

    def url_for(self, key: SchemaKey) -> str:
        # SchemaKey parts are restricted tokens (no '/', '%', '..'), so the URL path cannot be escaped.
        return f"{self.base}{key.path}{self.spec.suffix}"

    async def open(self) -> None:
        self._ensure_client()

    def _ensure_client(self) -> Any:
        if self._client is None:
            import httpx  # present: check_pipeline refuses the pipeline otherwise (requires)

            self._client = httpx.AsyncClient(
                headers=self._headers,
                timeout=httpx.Timeout(self.spec.timeout),
                follow_redirects=True,
                max_redirects=3,
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=2),
            )
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def fetch(self, key: SchemaKey) -> bytes | None:
        import httpx

        client = self._ensure_client()
        url = self.url_for(key)
        shown = f"{self._shown_base}{key.path}{self.spec.suffix}"
        backoff = self.spec.retry_backoff
        problem = ""
        for attempt in range(self.spec.retries + 1):
            if attempt:
                await anyio.sleep(backoff)
                backoff *= 2
            try:
                async with client.stream("GET", url) as response:
                    status = response.status_code
                    if status == 200:
                        return await _read(response, shown)
                    if status == 404:
                        return None
                    if status in (401, 403):
                        raise RepositoryUnavailable(
                            f"GET {shown} was refused ({status}); check api_key/headers"
                        )
                    problem = f"GET {shown} answered {status}"
                    if status not in _RETRIED:
                        raise RepositoryUnavailable(problem)
            except httpx.TimeoutException:
                problem = f"GET {shown} timed out after {self.spec.timeout}s"
            except httpx.TransportError as exc:
                problem = f"GET {shown} failed: {type(exc).__name__}: {exc}"
            except httpx.HTTPError as exc:  # too many redirects, invalid URL...
                raise RepositoryUnavailable(f"GET {shown} failed: {type(exc).__name__}: {exc}") from exc
        attempts = self.spec.retries + 1
        raise RepositoryUnavailable(f"{problem} ({attempts} attempt{'s' if attempts > 1 else ''})")


async def _read(response: Any, url: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > _MAX_SCHEMA_BYTES:
        raise RepositoryUnavailable(f"GET {url} is {declared} bytes, more than the {_MAX_SCHEMA_BYTES} allowed")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > _MAX_SCHEMA_BYTES:
            raise RepositoryUnavailable(f"GET {url} is more than the {_MAX_SCHEMA_BYTES} bytes allowed")
        chunks.append(chunk)
    return b"".join(chunks)
