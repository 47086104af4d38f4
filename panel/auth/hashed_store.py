"""Credentials kept in Redis under the SHA-256 of their secret: what sessions and tokens share.

A browser session's cookie and an API token are bearer secrets. Redis holds neither, only a
hash keyed by the secret's SHA-256 (`secret_hash`), so a copy of the database opens no
session and no API. This store writes such a hash (with an expiry and an index set when the
kind has them), reads it back as text, updates a field, and deletes it; what the fields mean
is the session's and the token's own business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import cast

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from core.text import as_text


def secret_hash(secret: str) -> str:
    """The hex SHA-256 under which a secret's credential is stored."""
    return hashlib.sha256(secret.encode("utf-8", "replace")).hexdigest()


class HashKeyedStore:
    """Hashes at `key_of(secret_hash)`, optionally listed in the set `index`."""

    def __init__(
        self, client: aioredis.Redis, key_of: Callable[[str], str], *, index: str | None = None
    ) -> None:
        self._client = client
        self.key_of = key_of
        self._index = index

    async def put(
        self, hashed: str, fields: Mapping[FieldT, EncodableT], *, expire_s: int | None = None
    ) -> None:
        """Write a credential's fields (and its expiry and index entry) in one transaction."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key_of(hashed), mapping=fields)
            if expire_s is not None:
                pipe.expire(self.key_of(hashed), expire_s)
            if self._index is not None:
                pipe.sadd(self._index, hashed)
            await pipe.execute()

    async def fields(self, hashed: str) -> dict[str, str] | None:
        """A credential's fields as text, or None when there is none."""
        raw = cast(dict[bytes, bytes], await self._client.hgetall(self.key_of(hashed)))
        return {as_text(k): as_text(v) for k, v in raw.items()} if raw else None

    async def update(
        self, hashed: str, name: str, value: str, *, expire_s: int | None = None
    ) -> None:
        """Set one field (and renew the expiry, when the kind has one)."""
        if expire_s is None:
            await self._client.hset(self.key_of(hashed), name, value)
            return
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key_of(hashed), name, value)
            pipe.expire(self.key_of(hashed), expire_s)
            await pipe.execute()

    async def delete(self, hashed: str) -> bool:
        """Remove a credential (and its index entry); whether it existed."""
        removed = await self._client.delete(self.key_of(hashed))
        if self._index is not None:
            await self._client.srem(self._index, hashed)
        return bool(removed)

    async def indexed(self) -> list[str]:
        """Every hash in the index, sorted."""
        if self._index is None:
            return []
        return sorted(as_text(h) for h in await self._client.smembers(self._index))
