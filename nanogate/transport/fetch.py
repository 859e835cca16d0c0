"""Input images named by URL: fetched under the egress guard, within byte, time and pixel limits,
their type sniffed from the bytes. Shared by task workers and the OpenAI dialect."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from nanogate.core.images import ImageRejected, inspect_image
from nanogate.transport.egress import EgressRefused, FetchFailed, GuardedHttp


@dataclass(frozen=True, slots=True)
class Limits:
    """What one input image may cost: bytes, fetch time and pixels."""

    max_bytes: int
    timeout_s: float
    max_pixels: int


class InputRejected(Exception):
    """The URL could not be fetched, or did not hold an image the gateway takes."""


class ImageFetcher:
    def __init__(self, http: GuardedHttp, limits: Limits) -> None:
        self.http = http
        self.limits = limits

    async def fetch(self, url: str) -> tuple[str, bytes]:
        """(mime, bytes) of the image at `url`; the message of InputRejected says what failed."""
        try:
            fetched = await self.http.fetch(
                url, max_bytes=self.limits.max_bytes, timeout_s=self.limits.timeout_s
            )
            mime, _, _ = await asyncio.to_thread(self.inspect, fetched.data)
        except (EgressRefused, FetchFailed, ImageRejected) as exc:
            raise InputRejected(str(exc)) from exc
        return mime, fetched.data

    def inspect(self, data: bytes) -> tuple[str, int, int]:
        """(mime, width, height) of uploaded bytes, under the same pixel limit."""
        return inspect_image(data, max_pixels=self.limits.max_pixels)
