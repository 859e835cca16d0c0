"""Thumbnails for the console's gallery: made once per stored image, kept in result storage, and
found again through the `thumbnails` table, so a grid never ships a full 4K image."""

from __future__ import annotations

import asyncio
import contextlib

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.core.images import ImageRejected, thumbnail_image
from nanogate.db.tables import thumbnails, utcnow
from nanogate.storage import Storage

MAX_SIDE = 384  # two columns of a 1280 px grid at 2x density stay sharp
THUMB_TYPE = "image/webp"


class Thumbnails:
    def __init__(self, engine: AsyncEngine, storage: Storage) -> None:
        self._engine = engine
        self._storage = storage

    async def get(self, source: str) -> bytes | None:
        """The thumbnail of stored object `source` (WebP), or None when the source is gone or
        is not an image."""
        async with self._engine.connect() as conn:
            made = await conn.scalar(
                select(thumbnails.c.thumbnail).where(thumbnails.c.source == source)
            )
        if made is not None and (found := await self._storage.get(made)) is not None:
            return found[0]
        original = await self._storage.get(source)
        if original is None:
            return None
        try:
            data = await asyncio.to_thread(thumbnail_image, original[0], MAX_SIDE)
        except ImageRejected:
            return None
        stored = await self._storage.put(data, THUMB_TYPE)
        await self._remember(source, stored.name, replace=made is not None)
        return data

    async def _remember(self, source: str, name: str, *, replace: bool) -> None:
        if replace:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(thumbnails)
                    .where(thumbnails.c.source == source)
                    .values(thumbnail=name, created_at=utcnow())
                )
            return
        # Two first views at once both make it; the same bytes land under the same name.
        with contextlib.suppress(IntegrityError):
            async with self._engine.begin() as conn:
                await conn.execute(insert(thumbnails).values(source=source, thumbnail=name))
