"""API tokens: shown once at creation, stored only as a SHA-256 hash, carrying the user's role.

A token is 32 random bytes (URL-safe base64) behind a `prov_` prefix, so a leaked one is
easy to recognise in a log or a scanner. Redis keeps `prov:token:<sha256>`; whoever reads
Redis learns nothing that authenticates. The role is the user's role at the time of use, so
changing or removing a user takes effect on their tokens at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

import redis.asyncio as aioredis

from core.keys import RedisKeys
from panel.auth.hashed_store import HashKeyedStore, secret_hash

TOKEN_PREFIX: Final = "prov_"  # noqa: S105 - a marker that makes leaks recognisable
TOKEN_ID_CHARS: Final = 12


def token_hash(token: str) -> str:
    """The hex SHA-256 under which a token is stored."""
    return secret_hash(token)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is known about a token (never the token itself)."""

    token_id: str
    user: str
    name: str
    created_at: int
    expires_at: int | None
    last_used_at: int | None

    def expired(self, now_ms: int) -> bool:
        """Whether the token is past its expiry."""
        return self.expires_at is not None and now_ms >= self.expires_at


def token_shaped(token: str) -> bool:
    """Whether `token` could be one of ours (worth hashing and looking up)."""
    return token.startswith(TOKEN_PREFIX) and len(token) <= 200


def token_info(hashed: str, values: dict[str, str]) -> TokenInfo:
    """A token's description from its hash's fields (as text)."""
    return TokenInfo(
        token_id=hashed[:TOKEN_ID_CHARS],
        user=values.get("user", ""),
        name=values.get("name", ""),
        created_at=int(values.get("created_at", "0") or "0"),
        expires_at=int(values["expires_at"]) if values.get("expires_at") else None,
        last_used_at=int(values["last_used_at"]) if values.get("last_used_at") else None,
    )


class TokenStore:
    """API tokens of one namespace."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self._store = HashKeyedStore(client, keys.token, index=keys.tokens)
        self._keys = keys

    def key_of(self, hashed: str) -> str:
        """The Redis key of the token whose hash is `hashed`."""
        return self._keys.token(hashed)

    async def create(
        self, user: str, *, name: str = "", expires_at_ms: int | None = None
    ) -> tuple[str, TokenInfo]:
        """A new token for `user`: the token (show it once) and its description."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        hashed = token_hash(token)
        now = int(time.time() * 1000)
        expires = "" if expires_at_ms is None else str(expires_at_ms)
        await self._store.put(
            hashed,
            {"user": user, "name": name[:100], "created_at": str(now), "expires_at": expires},
        )
        info = TokenInfo(
            token_id=hashed[:TOKEN_ID_CHARS],
            user=user,
            name=name[:100],
            created_at=now,
            expires_at=expires_at_ms,
            last_used_at=None,
        )
        return token, info

    async def authenticate(self, token: str, *, now_ms: int) -> TokenInfo | None:
        """The token's description if it exists and has not expired."""
        if not token_shaped(token):
            return None
        hashed = token_hash(token)
        values = await self._store.fields(hashed)
        if values is None:
            return None
        # The lookup was by hash already; comparing again in constant time costs nothing
        # and keeps the check independent of how Redis matched the key.
        if not hmac.compare_digest(hashed, token_hash(token)):
            return None
        return await self.accept(hashed, values, now_ms=now_ms)

    async def accept(self, hashed: str, values: dict[str, str], *, now_ms: int) -> TokenInfo | None:
        """The token stored as `values` if it has not expired; its use is recorded."""
        info = token_info(hashed, values)
        if info.expired(now_ms):
            return None
        last_used = info.last_used_at or 0
        if now_ms - last_used > 60_000:  # record use, at most once a minute per token
            await self._store.update(hashed, "last_used_at", str(now_ms))
        return info

    async def all(self, user: str | None = None) -> list[TokenInfo]:
        """Every token (of `user`, when given), oldest first."""
        found: list[TokenInfo] = []
        for hashed in await self._store.indexed():
            values = await self._store.fields(hashed)
            if values is not None:
                info = token_info(hashed, values)
                if user is None or info.user == user:
                    found.append(info)
        return sorted(found, key=lambda info: info.created_at)

    async def revoke(self, token_id: str) -> int:
        """Delete the tokens whose id is `token_id` (a prefix of the hash); how many went."""
        if len(token_id) < 8 or not all(c in "0123456789abcdef" for c in token_id):
            return 0
        revoked = 0
        for hashed in await self._store.indexed():
            if hashed.startswith(token_id):
                await self._store.delete(hashed)
                revoked += 1
        return revoked

    async def revoke_user(self, user: str) -> int:
        """Delete every token of `user` (their account is gone)."""
        revoked = 0
        for info in await self.all(user):
            revoked += await self.revoke(info.token_id)
        return revoked
