"""The Redis connection that panel, agent and CLI share, and the durability check at start.

Plumbing, not one of the pure modules, except `durability_problems`, which only reads a
mapping so it can be tested without a server.

Clients never decode responses: envelopes are signed bytes and must reach the verifier
exactly as they were written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.retry
from redis.backoff import ExponentialBackoff
from structlog.typing import FilteringBoundLogger

# A few quick reconnects ride out a Redis restart or a dropped socket (0.05, 0.1, 0.2 s);
# a longer outage is the caller's to handle (the agent's loop reconnects on its own).
RETRY_ATTEMPTS = 3
RETRY_BASE_S = 0.05
RETRY_CAP_S = 1.0
# PING an idle pooled connection before reusing it after this long, so a connection the
# server or a NAT dropped is noticed before a command is lost on it.
HEALTH_CHECK_INTERVAL_S = 30

# Only connection errors are retried: a timeout means the server is stalled, and sending
# the command again would double the wait and might repeat a write that did happen.
_RETRIED_ERRORS: tuple[type[redis.RedisError], ...] = (redis.ConnectionError,)

DURABILITY_SETTINGS = ("appendonly", "appendfsync", "maxmemory-policy")


async def connect(url: str, *, socket_timeout_s: float = 10.0) -> redis.asyncio.Redis:
    """An asyncio client for `url` (redis://, rediss:// or unix://), checked with PING."""
    client = redis.asyncio.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=redis.asyncio.retry.Retry(
            ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S),
            RETRY_ATTEMPTS,
            supported_errors=_RETRIED_ERRORS,
        ),
    )
    try:
        await client.ping()
    except BaseException:
        # Nobody else holds the client yet: close its pool so no socket or warning leaks.
        await client.aclose()
        raise
    return client


async def connect_with_patience(
    url: str, log: FilteringBoundLogger, *, event: str, max_delay_s: float = 5.0
) -> redis.asyncio.Redis:
    """`connect`, retried with a doubling delay while Redis is not up yet: a daemon may start
    before its Redis (a boot, a failover). Each failed try is logged as `event`, naming the
    error's type only (its text may carry the URL)."""
    delay = 0.2
    while True:
        try:
            return await connect(url)
        except (OSError, redis.RedisError) as error:
            log.warning(event, error=type(error).__name__, retry_in_s=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)


def connect_sync(url: str, *, socket_timeout_s: float = 10.0) -> redis.Redis:
    """A blocking client for `url`, configured like `connect`, checked with PING."""
    client = redis.Redis.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=redis.retry.Retry(
            ExponentialBackoff(cap=RETRY_CAP_S, base=RETRY_BASE_S),
            RETRY_ATTEMPTS,
            supported_errors=_RETRIED_ERRORS,
        ),
    )
    try:
        client.ping()
    except BaseException:
        client.close()
        raise
    return client


def durability_problems(config: Mapping[str, str]) -> list[str]:
    """Every way the server described by CONFIG GET results could lose acknowledged jobs.

    A setting missing from `config` is not judged here (the server did not report it);
    `check_durability` says so separately.
    """
    problems: list[str] = []
    appendonly = config.get("appendonly")
    if appendonly is not None and appendonly.strip().lower() != "yes":
        problems.append(
            f"appendonly is {appendonly!r}: without the append-only file a Redis restart "
            "loses every job written since the last snapshot; set appendonly yes"
        )
    appendfsync = config.get("appendfsync")
    if appendfsync is not None and appendfsync.strip().lower() == "no":
        problems.append(
            "appendfsync is 'no': the OS decides when the append-only file reaches the disk, "
            "so a machine crash can lose many seconds of jobs; set appendfsync everysec"
        )
    policy = config.get("maxmemory-policy")
    if policy is not None and policy.strip().lower() != "noeviction":
        problems.append(
            f"maxmemory-policy is {policy!r}: when memory runs out Redis evicts keys, "
            "including queued jobs and their history; set maxmemory-policy noeviction"
        )
    return problems


async def check_durability(client: redis.asyncio.Redis, log: FilteringBoundLogger) -> list[str]:
    """Read the server's durability settings, warn loudly about each risk, return them.

    A server that refuses CONFIG (managed Redis often does) is not an error: the check
    warns that durability could not be verified and returns no problems.
    """
    config: dict[str, str] = {}
    for name in DURABILITY_SETTINGS:
        # One setting per call: Redis before 7 takes a single pattern per CONFIG GET.
        try:
            reply = await client.config_get(name)
        except redis.ResponseError as exc:
            log.warning(
                "redis.durability_unchecked",
                reason=f"CONFIG GET {name} refused: {exc}",
                hint="make sure the server uses appendonly yes and maxmemory-policy noeviction",
            )
            return []
        config.update(_decode_config(reply))

    missing = [name for name in DURABILITY_SETTINGS if name not in config]
    if missing:
        log.warning(
            "redis.durability_unchecked",
            reason="the server did not report " + ", ".join(missing),
        )
    problems = durability_problems(config)
    for problem in problems:
        log.warning("redis.durability_risk", problem=problem)
    return problems


def _decode_config(reply: object) -> dict[str, str]:
    """CONFIG GET answers bytes (this project never decodes responses); make them text."""
    if not isinstance(reply, Mapping):
        return {}  # not the documented answer: report the settings as missing instead

    def text(value: object) -> str:
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)

    return {text(key).lower(): text(value) for key, value in reply.items()}
