"""Browser sessions, server-side in Redis, with idle and absolute timeouts.

The cookie holds 32 random bytes; Redis holds `prov:session:<sha256 of the cookie>`, so a
copy of Redis opens no session. Each login makes a new session (a session id chosen before
login is never promoted), and each session has its own CSRF token. The idle timeout is the
key's TTL, refreshed as the user is active; the absolute timeout is checked against the
creation time, whatever the activity.

Hand-written rather than aiohttp-session: that library keeps its state under plain string
request keys (which aiohttp 3.14 warns about) and would add an encoder layer this needs not.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from core.keys import RedisKeys
from panel.auth.hashed_store import HashKeyedStore, secret_hash

COOKIE_NAME: Final = "prov_session"
# Refresh the idle TTL at most this often, so reading pages is not a write per request.
TOUCH_EVERY_MS: Final = 30_000


def session_hash(session_id: str) -> str:
    """The hex SHA-256 under which a session is stored."""
    return secret_hash(session_id)


@dataclass(frozen=True, slots=True)
class Session:
    """One logged-in browser."""

    session_id: str
    user: str
    csrf_token: str
    created_at: int
    last_seen: int


class SessionStore:
    """Sessions of one namespace."""

    def __init__(
        self, client: aioredis.Redis, keys: RedisKeys, *, idle_s: int, absolute_s: int
    ) -> None:
        self._store = HashKeyedStore(client, keys.session)
        self._keys = keys
        self.idle_s = idle_s
        self.absolute_s = absolute_s

    async def create(self, user: str, *, now_ms: int) -> Session:
        """A fresh session for `user`."""
        session = Session(
            session_id=secrets.token_urlsafe(32),
            user=user,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now_ms,
            last_seen=now_ms,
        )
        await self._store.put(
            session_hash(session.session_id),
            {
                "user": user,
                "csrf": session.csrf_token,
                "created_at": str(now_ms),
                "last_seen": str(now_ms),
            },
            expire_s=self.idle_s,
        )
        return session

    async def get(self, session_id: str, *, now_ms: int) -> Session | None:
        """The live session behind a cookie value, or None (unknown, idle, or too old)."""
        key = self.key_of(session_id)
        if key is None:
            return None
        values = await self._store.fields(session_hash(session_id))
        if values is None:
            return None
        return await self.accept(session_id, values, now_ms=now_ms)

    def key_of(self, session_id: str) -> str | None:
        """The Redis key of the session behind a cookie value; None for an impossible one."""
        if not session_id or len(session_id) > 128:
            return None
        return self._keys.session(session_hash(session_id))

    async def accept(
        self, session_id: str, values: dict[str, str], *, now_ms: int
    ) -> Session | None:
        """The session stored as `values`, unless idle or too old (then deleted).

        Its idle timeout is refreshed at most every `TOUCH_EVERY_MS`.
        """
        created_at = int(values.get("created_at", "0") or "0")
        last_seen = int(values.get("last_seen", "0") or "0")
        hashed = session_hash(session_id)
        if now_ms - created_at > self.absolute_s * 1000 or now_ms - last_seen > self.idle_s * 1000:
            await self._store.delete(hashed)
            return None
        if now_ms - last_seen > TOUCH_EVERY_MS:
            await self._store.update(hashed, "last_seen", str(now_ms), expire_s=self.idle_s)
            last_seen = now_ms
        return Session(
            session_id=session_id,
            user=values.get("user", ""),
            csrf_token=values.get("csrf", ""),
            created_at=created_at,
            last_seen=last_seen,
        )

    async def delete(self, session_id: str) -> None:
        """End a session (logout)."""
        await self._store.delete(session_hash(session_id))
