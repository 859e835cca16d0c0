"""Google AI Studio, or any Gemini-native gateway, as an upstream.

The client's body is sent byte for byte; only the URL (mapped model name) and the credential
change. Responses come back as raw bytes, in the pieces they were read in (never joined: see
core/payload.py); streams are re-framed event by event, never buffered whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from nanogate.core.canonical import MalformedResponse, usage_from_response
from nanogate.core.config import UpstreamConfig
from nanogate.core.errors import UpstreamError
from nanogate.core.types import Call, Chunk, Reply
from nanogate.transport import client as http


class GeminiUpstream:
    kind = "gemini"

    def __init__(self, config: UpstreamConfig) -> None:
        self.name = config.name
        self.config = config
        self._key = config.api_key.get_secret_value() if config.api_key else ""
        self._client = http.Client(config)

    # -- the interface ---------------------------------------------------------------------

    async def generate(self, call: Call) -> Reply:
        timeout = aiohttp.ClientTimeout(
            total=self.config.timeout_s, connect=self.config.connect_timeout_s
        )
        async with (
            self._transport_errors(),
            self._http().post(
                self._url(call, sse=False),
                data=call.body,
                headers=self._headers(call.request_id),
                timeout=timeout,
            ) as resp,
        ):
            if resp.status != 200:
                raise self._status_error(resp, await resp.read())
            body = await http.read_pieces(resp)
        try:
            usage = usage_from_response(body)
        except MalformedResponse as exc:
            raise UpstreamError(self.name, 502, str(exc)) from None
        return Reply(body, self.name, usage)

    async def stream(self, call: Call) -> AsyncIterator[Chunk]:
        # The deadline covers reaching the first byte; after that each read must arrive within
        # it too. The stream's whole length is the gateway's to bound (core/pace.py).
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.connect_timeout_s,
            sock_read=self.config.timeout_s,
        )
        async with self._transport_errors():
            resp = await self._http().post(
                self._url(call, sse=True),
                data=call.body,
                headers=self._headers(call.request_id),
                timeout=timeout,
            )
        try:
            if resp.status != 200:
                async with self._transport_errors():
                    body = await resp.read()
                raise self._status_error(resp, body)
            async with self._transport_errors():
                async for event in _sse_events(resp.content):
                    try:
                        usage = usage_from_response(event)
                    except MalformedResponse as exc:
                        raise UpstreamError(self.name, 502, str(exc)) from None
                    yield Chunk(event, usage)
        finally:
            resp.release()

    async def health(self) -> bool:
        url = f"{self.config.base_url}{self.config.path_prefix}/models"
        try:
            async with self._http().get(
                self._with_query_key(url),
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(10),
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def list_models(self, *, max_pages: int = 20) -> list[dict[str, Any]]:
        """Google's `Model` resources from GET …/models, every page (for `nanogate models
        check` and the daily model check)."""
        found: list[dict[str, Any]] = []
        token = ""
        for _ in range(max_pages):
            url = f"{self.config.base_url}{self.config.path_prefix}/models?pageSize=1000"
            if token:
                url += f"&pageToken={quote(token)}"
            async with (
                self._transport_errors(),
                self._http().get(
                    self._with_query_key(url),
                    headers=self._headers(),
                    timeout=aiohttp.ClientTimeout(
                        total=self.config.timeout_s, connect=self.config.connect_timeout_s
                    ),
                ) as resp,
            ):
                body = await resp.read()
                if resp.status != 200:
                    raise self._status_error(resp, body)
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise UpstreamError(self.name, 502, "the models list is not JSON") from None
            models = doc.get("models") if isinstance(doc, dict) else None
            if not isinstance(models, list):
                raise UpstreamError(self.name, 502, "the models list has no 'models' array")
            found.extend(m for m in models if isinstance(m, dict))
            token = str(doc.get("nextPageToken") or "")
            if not token:
                break
        return found

    async def close(self) -> None:
        await self._client.close()

    # -- plumbing --------------------------------------------------------------------------

    def _url(self, call: Call, *, sse: bool) -> str:
        model = self.config.mapped(self.config.model_map, call.model.names)
        url = f"{self.config.base_url}{self.config.path_prefix}/models/{model}:{call.method}"
        if sse:
            url += "?alt=sse"
        return self._with_query_key(url)

    def _with_query_key(self, url: str) -> str:
        if self.config.auth_style != "query" or not self._key:
            return url
        return f"{url}{'&' if '?' in url else '?'}key={self._key}"

    def _headers(self, request_id: str | None = None) -> dict[str, str]:
        # The request id lets an operator match our logs with a Gemini-native reseller's.
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers["x-request-id"] = request_id
        if self._key and self.config.auth_style == "bearer":
            headers["Authorization"] = f"Bearer {self._key}"
        elif self._key and self.config.auth_style == "x-goog-api-key":
            headers["x-goog-api-key"] = self._key
        return headers

    def _status_error(self, resp: aiohttp.ClientResponse, body: bytes) -> UpstreamError:
        message, reason = _error_message(body, resp.status, self._key)
        status = resp.status
        # Google answers a bad API key with 400 INVALID_ARGUMENT; it is our credential that is
        # wrong, not the client's request, so treat it like a 401 (fail over, tell the operator).
        if status == 400 and (b"API_KEY_INVALID" in body or b"API key not valid" in body):
            status = 401
        return UpstreamError(
            self.name,
            status,
            message,
            reason=reason,
            retry_after=http.parse_retry_after(resp.headers.get("Retry-After")),
        )

    def _http(self) -> aiohttp.ClientSession:
        return self._client.session()

    def _transport_errors(self) -> http.TransportErrors:
        return self._client.errors()


def _error_message(body: bytes, status: int, secret: str | None) -> tuple[str, str | None]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status}", None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict):
        reason = error.get("status")
        message = http.vendor_message(str(error.get("message") or f"HTTP {status}"), secret)
        return message, (reason if isinstance(reason, str) else None)
    return f"HTTP {status}", None


async def _sse_events(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Yield each event's `data` payload. Lines may be megabytes long (inline images), so the
    stream is split by hand instead of with readline's bounded buffer."""
    buffer = bytearray()
    scanned = 0  # where the separator search resumes: keeps a huge event linear, not quadratic
    async for piece in content.iter_any():
        buffer += piece
        while True:
            end, sep_len = _event_end(buffer, scanned)
            if end < 0:
                scanned = max(0, len(buffer) - 3)
                break
            event = bytes(buffer[:end])
            del buffer[: end + sep_len]
            scanned = 0
            data = _event_data(event)
            if data:
                yield data
    if buffer.strip():
        data = _event_data(bytes(buffer))
        if data:
            yield data


def _event_end(buffer: bytearray, start: int) -> tuple[int, int]:
    crlf = buffer.find(b"\r\n\r\n", start)
    lf = buffer.find(b"\n\n", start)
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    return lf, 2


def _event_data(event: bytes) -> bytes:
    lines = [line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines).strip()
