"""Shared fixtures and the strict-skip switch.

With `PROV_TESTS_STRICT=1` (set by `.ci/run`) a skipped test is reported as a failure: a test
that needs something absent must fail in CI, never pass quietly.

Redis: one real server per test session, started by the same launcher `provision up` uses
(`redis_server`, `redis_url`). Tests share it without FLUSHALL by giving every test its own
key namespace (`namespace`, `redis_keys`); `redis_client` (asyncio) and `redis_sync` are
clients for it, closed after each test.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Generator, Iterator
from uuid import uuid4

import pytest
import redis
import redis.asyncio

from core.errors import RedisServerNotFound
from core.keys import RedisKeys
from core.runtime.redis_conn import connect, connect_sync
from core.runtime.redis_launcher import RedisServer, find_redis_server, start_redis

STRICT = os.environ.get("PROV_TESTS_STRICT", "") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    outcome = yield
    report = outcome.get_result()
    if STRICT and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under PROV_TESTS_STRICT=1: {report.longrepr}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis server for the whole session (appendonly, noeviction, Unix socket)."""
    try:
        binary = find_redis_server()
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))
    server = start_redis(tmp_path_factory.mktemp("redis"), binary=binary)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session's Redis server, for code under test that connects by itself."""
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    """A key namespace no other test uses, so tests share one server without FLUSHALL."""
    return f"t{uuid4().hex[:12]}"


@pytest.fixture
def redis_keys(namespace: str) -> RedisKeys:
    """Key names under this test's own namespace."""
    return RedisKeys(namespace)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client (bytes responses) on the session server, closed after the test."""
    client = await connect(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_sync(redis_url: str) -> Iterator[redis.Redis]:
    """A blocking client (bytes responses) on the session server, closed after the test."""
    client = connect_sync(redis_url)
    try:
        yield client
    finally:
        client.close()
