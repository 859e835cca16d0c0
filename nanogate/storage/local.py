"""The local backend: one file per object under a directory, named by its content.

All disk work runs in worker threads, so a large image never stalls the event loop. Writes go
to a temp file beside the target and are renamed into place: a reader sees the whole object
or none, and a crash leaves at most a temp file, which `sweep` clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from nanogate.core.metrics import observe_storage_error
from nanogate.storage import (
    StorageError,
    Stored,
    content_type_for,
    name_for,
    signed_url,
    valid_name,
)
from nanogate.storage.signing import UrlSigner

logger = logging.getLogger(__name__)

_TEMP_PREFIX = ".tmp-"
# A temp file this old belongs to no write in progress: its writer crashed.
TEMP_GRACE_S = 3600.0


class LocalStorage:
    def __init__(self, directory: Path, public_base_url: str, signer: UrlSigner) -> None:
        self._root = Path(directory)
        self._base_url = public_base_url.rstrip("/")
        self._signer = signer
        # Keeps "refresh an existing object" and "sweep decides it is old and deletes it" from
        # interleaving in this process; otherwise a put could return a name swept a moment later.
        self._lock = threading.Lock()

    async def start(self) -> None:
        """Nothing to prepare: the directory is made by the first put."""

    async def put(self, data: bytes, content_type: str) -> Stored:
        try:
            name = await asyncio.to_thread(self._put, data, content_type)
        except OSError as exc:
            raise storage_failed(exc) from None
        return Stored(name, content_type_for(name), len(data))

    async def get(self, name: str) -> tuple[bytes, str] | None:
        path = self._path(name)
        if path is None:
            return None
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        return data, content_type_for(name)

    async def delete(self, name: str) -> bool:
        path = self._path(name)
        if path is None:
            return False
        try:
            await asyncio.to_thread(path.unlink)
        except FileNotFoundError:
            return False
        return True

    async def sweep(self, older_than: datetime) -> int:
        """Remove objects whose last put is before `older_than` (naive means UTC).

        Returns how many objects were removed; crashed writers' temp files go too, uncounted.
        """
        if older_than.tzinfo is None:
            older_than = older_than.replace(tzinfo=UTC)
        return await asyncio.to_thread(self._sweep, older_than.timestamp())

    async def check(self) -> None:
        """The directory takes a one-byte file (made, then removed): a put could land."""
        try:
            await asyncio.to_thread(self._check)
        except OSError as exc:
            raise storage_failed(exc, "check") from None

    def url(self, name: str, *, expires: int) -> str:
        return signed_url(self._base_url, self._signer, name, expires)

    async def redirect_url(self, name: str, *, method: str, expires: int) -> str | None:
        """None: the file route serves the file itself, with sendfile and ranges."""
        return None

    async def close(self) -> None:
        """Nothing to release: every operation opens and closes its own file."""

    async def local_file(self, name: str) -> tuple[Path, os.stat_result] | None:
        """Where the object lives on disk and its stat, or None; local backend only.

        For the file route, so it can hand the file to `FileResponse` (sendfile, ranges)
        rather than read it all into memory.
        """
        path = self._path(name)
        if path is None:
            return None
        try:
            return path, await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            return None

    def _path(self, name: str) -> Path | None:
        return self._root / name if valid_name(name) else None

    def _put(self, data: bytes, content_type: str) -> str:
        name = name_for(data, content_type)
        path = self._root / name
        with self._lock, contextlib.suppress(FileNotFoundError):
            # Already stored: a new task refers to it now, so its retention starts over.
            os.utime(path)
            return name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=_TEMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                # Durable before it is visible: a power cut must not leave an empty object.
                os.fsync(file.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return name

    def _check(self) -> None:
        self._root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=_TEMP_PREFIX, dir=self._root) as file:
            file.write(b"\0")
            file.flush()

    def _sweep(self, cutoff: float) -> int:
        removed = 0
        stale_temp = time.time() - TEMP_GRACE_S
        try:
            shards = [entry for entry in os.scandir(self._root) if entry.is_dir()]
        except FileNotFoundError:
            return 0
        for shard in shards:
            # Shard directories stay (256 at most): removing one could race a put into it.
            with os.scandir(shard.path) as entries:
                for entry in entries:
                    if entry.name.startswith(_TEMP_PREFIX):
                        self._unlink_if_older(entry.path, stale_temp)
                    elif valid_name(f"{shard.name}/{entry.name}"):
                        removed += self._unlink_if_older(entry.path, cutoff)
        return removed

    def _unlink_if_older(self, path: str, cutoff: float) -> bool:
        with self._lock:
            try:
                if os.stat(path).st_mtime >= cutoff:
                    return False
                os.unlink(path)
            except FileNotFoundError:
                return False
        return True


def storage_failed(exc: OSError, doing: str = "put") -> StorageError:
    """A failed write (a full disk, an I/O error), counted and logged here, where it happens;
    what the client is told names the storage, not a path."""
    cause = os.strerror(exc.errno) if exc.errno else type(exc).__name__
    observe_storage_error(doing)
    logger.error("result storage failed: %s", cause)
    return StorageError(
        f"The gateway's result storage is failing ({cause}), so the answer could not be "
        "stored; nothing was charged for it. Retry later, or tell the operator."
    )
