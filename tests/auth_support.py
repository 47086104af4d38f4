"""Users and API tokens for tests that talk to a panel."""

from __future__ import annotations

import redis.asyncio as aioredis

from core.keys import RedisKeys
from panel.access import Role
from panel.tokens import TokenStore
from panel.users import UserStore

TEST_PASSWORD = "correct horse battery staple"


async def make_token(
    redis_url: str, namespace: str, *, name: str = "local", role: Role = Role.ADMIN
) -> str:
    """Create user `name` (if missing) with `role` and return a fresh API token for them."""
    client = aioredis.from_url(redis_url)
    try:
        keys = RedisKeys(namespace)
        users = UserStore(client, keys)
        if await users.get(name) is None:
            await users.add(name, role, TEST_PASSWORD)
        token, _info = await TokenStore(client, keys).create(name, name="test")
        return token
    finally:
        await client.aclose()


def bearer(token: str) -> dict[str, str]:
    """The header that authenticates with `token`."""
    return {"Authorization": f"Bearer {token}"}
