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

import hashlib
import secrets
from dataclasses import dataclass
from typing import Final, cast

import redis.asyncio as aioredis

from core.keys import RedisKeys
from core.text import as_text

COOKIE_NAME: Final = "prov_session"
# Refresh the idle TTL at most this often, so reading pages is not a write per request.
TOUCH_EVERY_MS: Final = 30_000


def session_hash(session_id: str) -> str:
    """The hex SHA-256 under which a session is stored."""
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


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
        self._client = client
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
        key = self._keys.session(session_hash(session.session_id))
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "user": user,
                    "csrf": session.csrf_token,
                    "created_at": str(now_ms),
                    "last_seen": str(now_ms),
                },
            )
            pipe.expire(key, self.idle_s)
            await pipe.execute()
        return session

    async def get(self, session_id: str, *, now_ms: int) -> Session | None:
        """The live session behind a cookie value, or None (unknown, idle, or too old)."""
        key = self.key_of(session_id)
        if key is None:
            return None
        raw = cast(dict[bytes, bytes], await self._client.hgetall(key))
        if not raw:
            return None
        values = {as_text(k): as_text(v) for k, v in raw.items()}
        return await self.accept(session_id, key, values, now_ms=now_ms)

    def key_of(self, session_id: str) -> str | None:
        """The Redis key of the session behind a cookie value; None for an impossible one."""
        if not session_id or len(session_id) > 128:
            return None
        return self._keys.session(session_hash(session_id))

    async def accept(
        self, session_id: str, key: str, values: dict[str, str], *, now_ms: int
    ) -> Session | None:
        """The session stored at `key` as `values`, unless idle or too old (then deleted).

        Its idle timeout is refreshed at most every `TOUCH_EVERY_MS`.
        """
        created_at = int(values.get("created_at", "0") or "0")
        last_seen = int(values.get("last_seen", "0") or "0")
        if now_ms - created_at > self.absolute_s * 1000 or now_ms - last_seen > self.idle_s * 1000:
            await self._client.delete(key)
            return None
        if now_ms - last_seen > TOUCH_EVERY_MS:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(key, "last_seen", str(now_ms))
                pipe.expire(key, self.idle_s)
                await pipe.execute()
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
        await self._client.delete(self._keys.session(session_hash(session_id)))
