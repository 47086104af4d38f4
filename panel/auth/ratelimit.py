"""Rate limits kept in Redis, so every panel process shares them: fixed-window counters.

`hit` counts one event and says whether the subject is over its limit for the current
window, and for how long; `hit_all` counts one event on several counters in one transaction,
so concurrent callers see the counters in the same order (the n-th to reach one counter is
the n-th to reach the others too). Used for failed logins (per account and per client
address), so no one guesses passwords quickly. (Submissions are limited inside the step that
stores a job: `panel.jobs.submission_limits`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.keys import RedisKeys


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `count` events per `window_s` seconds."""

    count: int
    window_s: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an event is allowed, and when to come back if not."""

    allowed: bool
    retry_after_s: int
    # The window's count, this event included (0 where nothing was counted).
    count: int = 0


class RateLimiter:
    """Counters of one namespace."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self._client = client
        self._keys = keys

    def _key(self, kind: str, subject: str, limit: Limit, now_s: int) -> tuple[str, int]:
        window = now_s // limit.window_s
        retry_after = (window + 1) * limit.window_s - now_s
        # Subjects are user names or addresses: bounded, and hashed nowhere (they are not
        # secrets), but cut to keep a hostile value from making a huge key.
        return self._keys.rate(kind, subject[:128], window), max(1, retry_after)

    async def hit(self, kind: str, subject: str, limit: Limit, *, now_s: int) -> Verdict:
        """Count one event; not allowed once the window holds more than `limit.count`."""
        key, retry_after = self._key(kind, subject, limit, now_s)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, limit.window_s + 1)
            count, _ = await pipe.execute()
        return Verdict(
            allowed=int(count) <= limit.count, retry_after_s=retry_after, count=int(count)
        )

    async def hit_all(
        self, events: Sequence[tuple[str, str, Limit]], *, now_s: int
    ) -> list[Verdict]:
        """`hit` on each `(kind, subject, limit)`, all in one transaction; in that order."""
        keyed = [(self._key(kind, subject, limit, now_s), limit) for kind, subject, limit in events]
        async with self._client.pipeline(transaction=True) as pipe:
            for (key, _retry_after), limit in keyed:
                pipe.incr(key)
                pipe.expire(key, limit.window_s + 1)
            results = await pipe.execute()
        counts = [int(count) for count in results[::2]]
        return [
            Verdict(allowed=count <= limit.count, retry_after_s=retry_after, count=count)
            for ((_key, retry_after), limit), count in zip(keyed, counts, strict=True)
        ]

    async def blocked(self, kind: str, subject: str, limit: Limit, *, now_s: int) -> Verdict:
        """Whether the subject is already over the limit, without counting anything."""
        key, retry_after = self._key(kind, subject, limit, now_s)
        count = await self._client.get(key)
        allowed = count is None or int(count) < limit.count
        return Verdict(allowed=allowed, retry_after_s=retry_after)

    async def undo(self, kind: str, subject: str, limit: Limit, *, now_s: int) -> None:
        """Take back one counted event (it turned out not to be one that should count)."""
        key, _ = self._key(kind, subject, limit, now_s)
        await self._client.decr(key)

    async def clear(self, kind: str, subject: str, limit: Limit, *, now_s: int) -> None:
        """Forget the current window (a successful login clears the account's failures)."""
        key, _ = self._key(kind, subject, limit, now_s)
        await self._client.delete(key)
