"""One round trip from a credential (API token or session) to its user: `authenticate.lua`.

Before, a request cost two: the token's (or session's) hash, then its user's. The script reads
both, fresh, on every request, so revoking a token, removing a user or changing a role still
takes effect on the very next request; nothing is cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import cast

import redis.asyncio as aioredis

from core.keys import RedisKeys
from core.text import as_text
from panel.auth.users import StoredUser, stored_user


def _script_text() -> str:
    return files("panel.auth").joinpath("lua", "authenticate.lua").read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class Found:
    """A credential's stored fields and its user (None: gone)."""

    fields: dict[str, str]
    user: StoredUser | None


class CredentialLookup:
    """Credentials of one namespace."""

    def __init__(self, client: aioredis.Redis, keys: RedisKeys) -> None:
        self._script = client.register_script(_script_text())
        self._user_prefix = keys.user("")

    async def lookup(self, key: str) -> Found | None:
        """The credential stored at `key` and its user, or None when there is no such key."""
        answer = cast(Sequence[object], await self._script(keys=[key], args=[self._user_prefix]))
        if not answer:
            return None
        flat = cast(list[bytes], answer[0])
        user_raw = cast(list[bytes | None], answer[1])
        fields = {as_text(flat[i]): as_text(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}
        user = None
        if user_raw:
            role, created_at, changed_at = user_raw
            user = stored_user(fields.get("user", ""), role, created_at, changed_at)
        return Found(fields=fields, user=user)
