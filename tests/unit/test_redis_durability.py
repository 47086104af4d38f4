"""Warnings about a Redis that could lose acknowledged jobs (docs/architecture.md §7)."""

from __future__ import annotations

import pytest
import redis
import structlog
from structlog.testing import capture_logs

from core.errors import RedisServerNotFound
from core.runtime.redis_conn import check_durability, connect, durability_problems
from core.runtime.redis_launcher import find_redis_server, start_redis

SAFE = {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}


def test_the_launchers_settings_have_no_durability_problem():
    assert durability_problems(SAFE) == []


def test_appendfsync_always_is_no_problem():
    assert durability_problems({**SAFE, "appendfsync": "always"}) == []


def test_no_append_only_file_is_a_problem():
    [problem] = durability_problems({**SAFE, "appendonly": "no"})
    assert "appendonly" in problem


@pytest.mark.parametrize(
    "policy",
    [
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ],
)
def test_every_evicting_memory_policy_is_a_problem(policy):
    [problem] = durability_problems({**SAFE, "maxmemory-policy": policy})
    assert "maxmemory-policy" in problem
    assert policy in problem


def test_appendfsync_no_is_a_problem():
    [problem] = durability_problems({**SAFE, "appendfsync": "no"})
    assert "appendfsync" in problem


def test_settings_are_compared_without_regard_to_case():
    assert durability_problems({"appendonly": "YES", "maxmemory-policy": "NoEviction"}) == []


def test_every_problem_is_reported_not_just_the_first():
    problems = durability_problems(
        {"appendonly": "no", "appendfsync": "no", "maxmemory-policy": "allkeys-lru"}
    )
    assert len(problems) == 3


def test_settings_the_server_did_not_report_are_not_judged():
    assert durability_problems({}) == []


class ConfigRefused:
    """A client of a managed Redis that has CONFIG disabled."""

    async def config_get(self, name):
        raise redis.ResponseError(
            f"unknown command 'CONFIG', with args beginning with: 'GET' '{name}'"
        )


async def test_a_server_refusing_config_is_warned_about_not_failed():
    with capture_logs() as logs:
        problems = await check_durability(ConfigRefused(), structlog.get_logger())
    assert problems == []
    assert [entry["event"] for entry in logs] == ["redis.durability_unchecked"]
    assert logs[0]["log_level"] == "warning"


@pytest.mark.redis
async def test_the_session_server_has_no_durability_problem(redis_client):
    with capture_logs() as logs:
        assert await check_durability(redis_client, structlog.get_logger()) == []
    assert logs == []


@pytest.mark.redis
async def test_an_evicting_server_without_aof_is_reported_loudly(tmp_path):
    try:
        binary = find_redis_server()
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))
    # A server of its own: the session's one must keep its durable settings.
    with start_redis(tmp_path / "risky", binary=binary) as server:
        client = await connect(server.url)
        try:
            await client.config_set("appendonly", "no")
            await client.config_set("maxmemory-policy", "allkeys-lru")
            with capture_logs() as logs:
                problems = await check_durability(client, structlog.get_logger())
        finally:
            await client.aclose()
    assert len(problems) == 2
    assert any("appendonly" in problem for problem in problems)
    assert any("allkeys-lru" in problem for problem in problems)
    risks = [entry for entry in logs if entry["event"] == "redis.durability_risk"]
    assert [entry["problem"] for entry in risks] == problems
    assert {entry["log_level"] for entry in risks} == {"warning"}


@pytest.mark.redis
async def test_a_user_denied_config_gets_a_warning_instead_of_an_error(tmp_path):
    try:
        binary = find_redis_server()
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))
    with start_redis(tmp_path / "acl", binary=binary) as server:
        admin = await connect(server.url)
        try:
            await admin.execute_command(
                "ACL", "SETUSER", "app", "on", ">secret", "~*", "+@all", "-config"
            )
        finally:
            await admin.aclose()
        path = server.url.removeprefix("unix://")
        client = await connect(f"unix://app:secret@{path}")
        try:
            with capture_logs() as logs:
                assert await check_durability(client, structlog.get_logger()) == []
        finally:
            await client.aclose()
    assert [entry["event"] for entry in logs] == ["redis.durability_unchecked"]
    assert "NOPERM" in logs[0]["reason"] or "permission" in logs[0]["reason"]
