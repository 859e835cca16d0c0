"""Console logins: a random cookie token, kept in the database only as its sha256.

Sessions live in the database rather than in a signed cookie so that logout (and revoking the
admin key) ends them at once, on every node of a cluster.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from nanogate.db.tables import console_sessions

COOKIE = "nanogate_session"
CSRF_HEADER = "x-csrf-token"


@dataclass(frozen=True, slots=True)
class Session:
    key_id: int
    csrf_token: str
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    def __init__(self, engine: AsyncEngine, lifetime: timedelta) -> None:
        self._engine = engine
        self.lifetime = lifetime

    async def open(self, key_id: int) -> tuple[str, Session]:
        """A new session for an admin key: the cookie's token, and the session."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        session = Session(key_id, secrets.token_urlsafe(32), now + self.lifetime)
        async with self._engine.begin() as conn:
            # Housekeeping rides on logins, which are rare: no sweeper task needed.
            await conn.execute(delete(console_sessions).where(console_sessions.c.expires_at < now))
            await conn.execute(
                insert(console_sessions).values(
                    token_hash=_digest(token),
                    key_id=key_id,
                    csrf_token=session.csrf_token,
                    created_at=now,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    async def get(self, token: str) -> Session | None:
        """The live session the cookie names, or None (unknown, expired or logged out)."""
        if not token or len(token) > 100:
            return None
        stmt = select(
            console_sessions.c.key_id,
            console_sessions.c.csrf_token,
            console_sessions.c.expires_at,
        ).where(console_sessions.c.token_hash == _digest(token))
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).first()
        if row is None or row.expires_at <= datetime.now(UTC):
            return None
        return Session(row.key_id, row.csrf_token, row.expires_at)

    async def close(self, token: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(console_sessions).where(console_sessions.c.token_hash == _digest(token))
            )


def csrf_matches(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf_token, presented)
