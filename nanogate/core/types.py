"""The shared vocabulary every layer speaks: one call in, one reply (or stream of chunks) out.

The canonical form in the middle is Gemini's GenerateContent request and response. A dialect
turns its wire format into a `Call`; an upstream adapter turns a `Call` into a `Reply` or an
async iterator of `Chunk`s; the dialect renders those back. Bodies stay raw bytes end to end so a
multi-megabyte image is never re-encoded on the relay path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # annotations only: the shared vocabulary imports nothing of the package
    from nanogate.core.catalog import ModelSpec
    from nanogate.core.payload import Payload

JSON = dict[str, Any]
Method = Literal["generateContent", "streamGenerateContent", "countTokens"]


@dataclass(slots=True)
class ImageRequest:
    """What the validator learned about the image the call asks for (None on text models)."""

    aspect_ratio: str | None
    image_size: str | None


@dataclass(slots=True)
class Call:
    """One validated request on its way to an upstream."""

    request_id: str
    method: Method
    model: ModelSpec
    body: bytes  # the client's JSON as it came: forwarded untouched
    request: JSON  # the same body parsed, for validation and the demo renderer
    image: ImageRequest | None = None
    input_images: int = 0


@dataclass(slots=True, kw_only=True)
class Usage:
    """Tokens by modality, as the upstream reported them in usageMetadata (by keyword only: a
    new modality must not shift the others)."""

    input_text: int = 0
    input_image: int = 0
    output_text: int = 0
    output_image: int = 0
    thoughts: int = 0
    total: int = 0
    images: int = 0  # image parts in the response
    cached: int = 0  # prompt tokens served from Google's context cache (part of the input)

    def add(self, other: Usage) -> None:
        """Sum another answer's usage into this one (n calls behind one request)."""
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def merge_max(self, other: Usage) -> None:
        """Stream chunks repeat cumulative counts; keep the largest seen."""
        for name in (
            "input_text",
            "input_image",
            "output_text",
            "output_image",
            "thoughts",
            "cached",
            "total",
        ):
            setattr(self, name, max(getattr(self, name), getattr(other, name)))
        self.images += other.images


@dataclass(slots=True)
class Reply:
    """A complete upstream answer: raw GenerateContentResponse (or countTokens) JSON bytes,
    in the pieces they were read in where the adapter reads them so (a large answer)."""

    body: bytes | Payload
    upstream: str
    usage: Usage = field(default_factory=Usage)


@dataclass(slots=True)
class Chunk:
    """One streamed GenerateContentResponse, as raw JSON bytes."""

    body: bytes
    usage: Usage | None = None


ChunkStream = AsyncIterator[Chunk]
