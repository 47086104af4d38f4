"""The fast tier: the panel's stores on fakeredis, where it is faithful.

fakeredis stands in for Redis only for plain hashes, sets, strings and expiry, which it models
exactly. Streams, blocking reads and Lua stay on a real server (tests/integration), since
there fakeredis and Redis differ in ways that matter to this project.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import fakeredis
import pytest


@pytest.fixture
async def fake_redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()
