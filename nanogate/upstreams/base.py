"""The one small interface every upstream kind implements.

An adapter owns its HTTP session (or none, for the demo) and translates everything its
transport or its vendor can throw into `UpstreamError`, so the router sees one error type.
"""

from __future__ import annotations

from typing import Protocol

from ..types import Call, ChunkStream, Reply


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
