"""The one small interface every upstream kind implements.

An adapter owns its HTTP session (or none, for the demo) and translates everything its
transport or its vendor can throw into `UpstreamError`, so the router sees one error type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from nanogate.core.types import Call, ChunkStream, Reply
from nanogate.storage import Storage
from nanogate.transport.egress import GuardedHttp


@dataclass(frozen=True, slots=True)
class Services:
    """What the process lends adapters of vendors that deal in files: result storage (inline
    input images go to a vendor as signed URLs) and the guarded client (its results come back
    as URLs, fetched under the egress guard and this size limit)."""

    storage: Storage
    files: GuardedHttp
    max_download_bytes: int


class Upstream(Protocol):
    name: str
    kind: str

    async def generate(self, call: Call) -> Reply:
        """generateContent (or countTokens): the whole answer."""
        ...

    def stream(self, call: Call) -> ChunkStream:
        """streamGenerateContent: GenerateContentResponse chunks as they arrive."""
        ...

    async def health(self) -> bool:
        """Cheap liveness probe, used to bring a cooled-down upstream back."""
        ...

    async def close(self) -> None: ...
