"""Result storage: generated images and stored answers, kept by content and handed out by URL.

Callers see bytes, names and URLs only, never filesystem paths, so an S3-compatible backend can
replace the local directory without touching them. Names are content-addressed,
`<first two hex digits>/<sha256 hex>.<ext>`: putting the same bytes twice stores them once, and
a name is safe in a URL path and cannot climb out of the store.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from nanogate.storage.signing import UrlSigner

__all__ = [
    "CONTENT_TYPES",
    "Storage",
    "Stored",
    "UrlSigner",
    "content_type_for",
    "digest_of",
    "extension_for",
    "name_for",
    "open_storage",
    "valid_name",
]

# The only types we name; anything else is kept as opaque bytes, so a stored object can never
# come back labelled as something a browser would run (HTML, SVG).
CONTENT_TYPES: dict[str, str] = {
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/webp": "webp",
    "image/heic": "heic",
    "image/heif": "heif",
    "application/json": "json",
}
FALLBACK_TYPE, FALLBACK_EXT = "application/octet-stream", "bin"
_TYPES_BY_EXT = {ext: ctype for ctype, ext in CONTENT_TYPES.items()} | {FALLBACK_EXT: FALLBACK_TYPE}
_NAME = re.compile(r"([0-9a-f]{2})/(\1[0-9a-f]{62})\.(" + "|".join(_TYPES_BY_EXT) + ")")


@dataclass(frozen=True, slots=True)
class Stored:
    name: str
    content_type: str
    size: int


class Storage(Protocol):
    async def put(self, data: bytes, content_type: str) -> Stored:
        """Store `data` under its content's name; the same bytes again refresh its retention."""
        ...

    async def get(self, name: str) -> tuple[bytes, str] | None:
        """The bytes and content type, or None (unknown, removed, or not a valid name)."""
        ...

    async def delete(self, name: str) -> bool:
        """Remove the object; False if there was none."""
        ...

    async def sweep(self, older_than: datetime) -> int:
        """Remove objects last put before `older_than`; how many were removed."""
        ...

    def url(self, name: str, *, expires: int) -> str:
        """A signed link to the object that stops working at the unix time `expires` (a fixed
        moment, so every rendering of the same result gives the same link)."""
        ...

    async def close(self) -> None: ...


def extension_for(content_type: str) -> str:
    """The extension naming `content_type`, parameters and case ignored; "bin" if unknown."""
    media_type = content_type.partition(";")[0].strip().lower()
    return CONTENT_TYPES.get(media_type, FALLBACK_EXT)


def content_type_for(name: str) -> str:
    return _TYPES_BY_EXT.get(name.rpartition(".")[2], FALLBACK_TYPE)


def name_for(data: bytes, content_type: str) -> str:
    digest = hashlib.sha256(data).hexdigest()
    return f"{digest[:2]}/{digest}.{extension_for(content_type)}"


def valid_name(name: str) -> bool:
    """Whether `name` is one `name_for` could give: the one check that keeps paths inside."""
    return _NAME.fullmatch(name) is not None


def digest_of(name: str) -> str:
    """The sha256 hex of a valid name's content (its strong ETag)."""
    return name.rpartition("/")[2].partition(".")[0]


def open_storage(directory: Path, public_base_url: str, signer: UrlSigner) -> Storage:
    """The configured backend; the local directory is the only one so far."""
    # Imported here so a future S3 backend's client library loads only when it is chosen.
    from nanogate.storage.local import LocalStorage

    return LocalStorage(directory, public_base_url, signer)
