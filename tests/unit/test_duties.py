"""The agent's side duties are supervised: outages ride through, bugs restart, then give up."""

from __future__ import annotations

import asyncio

import pytest
import structlog
import structlog.testing
from redis.exceptions import ConnectionError as RedisConnectionError

from agent.duties import MAX_CONSECUTIVE_FAILURES, Duty, supervise


class Script:
    """A duty that follows a script of outcomes, one per call ("ok", "redis", "bug")."""

    def __init__(self, outcomes: list[str], done: asyncio.Event) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.done = done

    async def __call__(self) -> None:
        self.calls += 1
        if not self.outcomes:
            self.done.set()
            return
        outcome = self.outcomes.pop(0)
        if outcome == "redis":
            raise RedisConnectionError("Redis is away")
        if outcome == "bug":
            raise KeyError("a bug")


async def run(outcomes: list[str]) -> tuple[Script, list[tuple[str, BaseException]]]:
    done = asyncio.Event()
    script = Script(outcomes, done)
    gave_up: list[tuple[str, BaseException]] = []
    await asyncio.wait_for(
        supervise(Duty("test", 0.001, script), done, lambda n, e: gave_up.append((n, e))), 10
    )
    return script, gave_up


async def test_a_duty_that_keeps_failing_gives_up_and_says_so():
    script, gave_up = await run(["bug"] * (MAX_CONSECUTIVE_FAILURES + 3))
    assert script.calls == MAX_CONSECUTIVE_FAILURES
    assert [name for name, _ in gave_up] == ["test"]
    assert isinstance(gave_up[0][1], KeyError)


async def test_a_success_between_failures_starts_the_count_again():
    outcomes = (["bug"] * (MAX_CONSECUTIVE_FAILURES - 1) + ["ok"]) * 3
    script, gave_up = await run(outcomes)
    assert gave_up == []
    assert script.calls == len(outcomes) + 1


async def test_a_redis_outage_never_stops_the_agent():
    script, gave_up = await run(["redis"] * (MAX_CONSECUTIVE_FAILURES * 4) + ["ok"])
    assert gave_up == []
    assert script.calls == MAX_CONSECUTIVE_FAILURES * 4 + 2


async def test_a_bug_is_logged_as_an_error_with_its_traceback_and_an_outage_as_a_warning():
    with structlog.testing.capture_logs() as logs:
        await run(["bug", "ok", "redis", "redis", "ok"])
    seen = [(entry["event"], entry["log_level"]) for entry in logs]
    assert seen == [
        ("agent.duty_failed", "error"),
        ("agent.duty_redis_error", "warning"),
        ("agent.duty_redis_error", "debug"),
        ("agent.duty_recovered", "info"),
    ]
    assert logs[0]["exc_info"] is True


@pytest.mark.parametrize("outcome", ["bug", "redis"])
async def test_a_stop_ends_the_wait_at_once(outcome):
    done = asyncio.Event()

    async def duty() -> None:
        done.set()
        raise KeyError("a bug") if outcome == "bug" else RedisConnectionError("away")

    await asyncio.wait_for(supervise(Duty("slow", 3600, duty), done, lambda *_: None), 2)
