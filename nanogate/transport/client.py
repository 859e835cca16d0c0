"""The HTTP plumbing every vendor adapter shares: one pooled session per upstream, transport
failures as UpstreamError, Retry-After read either way, and vendor messages made safe to show."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import UpstreamError
from nanogate.core.payload import Payload
from nanogate.core.redact import scrub

READ_BUFSIZE = 1 << 20


class Client:
    """One upstream's pooled session, created on first use so it binds to the running loop."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection cap unless the operator set one (0 is aiohttp's "no limit"): image
            # calls are long, and the router enforces max_concurrency itself.
            connector = aiohttp.TCPConnector(
                limit=self.config.max_concurrency or 0, ttl_dns_cache=300, keepalive_timeout=60
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                read_bufsize=READ_BUFSIZE,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                skip_auto_headers=("User-Agent",),
                headers={"User-Agent": "nanogate"},
            )
        return self._session

    def errors(self) -> TransportErrors:
        return TransportErrors(self.config.name)

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        *,
        body: bytes | aiohttp.FormData | None = None,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> tuple[int, bytes, CIMultiDictProxy[str]]:
        """One request read whole: (status, body, headers). Transport failures raise."""
        timeout = aiohttp.ClientTimeout(
            total=timeout_s or self.config.timeout_s, connect=self.config.connect_timeout_s
        )
        if isinstance(body, bytes):
            headers = {"Content-Type": "application/json", **headers}
        async with (
            self.errors(),
            self.session().request(
                method, url, data=body, params=params, headers=headers, timeout=timeout
            ) as resp,
        ):
            return resp.status, await resp.read(), resp.headers

    async def alive(self, url: str, headers: dict[str, str]) -> bool:
        """A cheap GET answered 200: the health probe of adapters that have no better one."""
        try:
            async with self.session().get(
                url, headers=headers, timeout=aiohttp.ClientTimeout(10)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class TransportErrors:
    """Translate aiohttp and timeout failures into UpstreamError at the adapter boundary."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        # Never swallows: anything not translated here propagates as it is.
        if exc is None or isinstance(exc, UpstreamError):
            return
        if isinstance(exc, TimeoutError | asyncio.TimeoutError):
            raise UpstreamError(self.upstream, 0, "timed out", timeout=True) from None
        if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            raise UpstreamError(self.upstream, 0, "connection closed mid-response") from None
        if isinstance(exc, aiohttp.ClientError):
            raise UpstreamError(self.upstream, 0, scrub(type(exc).__name__)) from None


async def read_pieces(resp: aiohttp.ClientResponse) -> Payload:
    """A response's body as the pieces the socket gave, not joined (`resp.read()` joins them
    twice: two more copies of a 16 MB answer, in fresh allocations)."""
    pieces = []
    async for piece, _ in resp.content.iter_chunks():
        if piece:
            pieces.append(piece)
    return Payload(pieces)


def parse_retry_after(value: str | None, now: datetime | None = None) -> int | None:
    """Retry-After as whole seconds from now: delta-seconds or an HTTP date; None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0, math.ceil(seconds))


def vendor_message(text: str, secret: str | None) -> str:
    """A vendor's error message, safe for a client: without our key there (a reseller may quote
    it back, in a shape the generic rules do not know), keys, base64, or excess length."""
    if secret:
        text = text.replace(secret, "[redacted-key]")
    return scrub(text)
