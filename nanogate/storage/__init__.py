"""Result storage: generated images and stored answers, kept by content and handed out by URL.

Callers see bytes, names and URLs only, never filesystem paths, so the S3-compatible backend
(s3.py) replaces the local directory (local.py) without touching them. Names are content-addressed,
`<first two hex digits>/<sha256 hex>.<ext>`: putting the same bytes twice stores them once, and
a name is safe in a URL path and cannot climb out of the store.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from nanogate.core.config import Settings
from nanogate.core.errors import Unavailable
from nanogate.storage.signing import UrlSigner

__all__ = [
    "CONTENT_TYPES",
    "Storage",
    "StorageError",
    "Stored",
    "UrlSigner",
    "content_type_for",
    "digest_of",
    "extension_for",
    "name_for",
    "open_storage",
    "signed_url",
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


class StorageError(Unavailable):
    """Result storage failed (unreachable, misconfigured, refusing): a 503 in the caller's own
    envelope. The message names storage and the kind of failure, never a key or a bucket."""


@dataclass(frozen=True, slots=True)
class Stored:
    name: str
    content_type: str
    size: int


class Storage(Protocol):
    """Every operation that reaches the store raises StorageError when it cannot."""

    async def start(self) -> None:
        """Prepare what needs the event loop (a client, a retention rule); never raises."""
        ...

    async def put(self, data: bytes, content_type: str) -> Stored:
        """Store `data` under its content's name; the same bytes again refresh its retention.
        A storage that cannot write (a full disk) raises StorageError, saying so."""
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

    async def check(self) -> None:
        """Whether the store can be written now (for /readyz): cheap, and raises StorageError
        when it cannot."""
        ...

    def url(self, name: str, *, expires: int) -> str:
        """A signed link to the object that stops working at the unix time `expires` (a fixed
        moment, so every rendering of the same result gives the same link)."""
        ...

    async def redirect_url(self, name: str, *, method: str, expires: int) -> str | None:
        """Where to send a client that holds a valid link, so the bytes bypass the gateway (a
        presigned URL valid until `expires` at most), or None: serve them here."""
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


def signed_url(base_url: str, signer: UrlSigner, name: str, expires: int) -> str:
    """The gateway's own link to the object: `/files/<name>` with its expiry and signature."""
    if not valid_name(name):
        raise ValueError("not a storage object name")
    return f"{base_url}/files/{name}?expires={expires}&sig={signer.sign(name, expires)}"


def open_storage(settings: Settings, signer: UrlSigner) -> Storage:
    """The backend `storage_backend` names: the local directory, or an S3-compatible bucket."""
    if settings.storage_backend == "s3":
        # Imported here: the S3 client library (an optional extra) loads only when chosen.
        from nanogate.storage.s3 import S3Storage

        return S3Storage.from_settings(settings, signer)
    from nanogate.storage.local import LocalStorage

    return LocalStorage(settings.resolved_storage_dir, settings.resolved_public_base_url, signer)
