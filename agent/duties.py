"""The agent's side duties (heartbeat, lease renewal, requeue, expiry, cancel watch), supervised.

Each duty runs every `period_s` until the agent stops. A Redis error is an outage, not a bug:
the duty simply tries again next period (the first failure of a streak is a warning, the
recovery is said too, the repeats in between are debug), and an outage never stops the agent,
which must ride out a Redis restart. Any other error is a bug: it is logged as an error with
its traceback and the duty restarts after a doubling backoff; a duty that fails
`MAX_CONSECUTIVE_FAILURES` times in a row gives up, and the supervisor tells the agent, which
stops loudly instead of running on without, say, lease renewal (another agent would then take
over running jobs). procrastinate's worker watches its side tasks the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import structlog
from redis.exceptions import RedisError

log = structlog.get_logger("agent.duties")

MAX_CONSECUTIVE_FAILURES: Final = 5
MAX_BACKOFF_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class Duty:
    """One periodic duty of the agent."""

    name: str
    period_s: float
    run: Callable[[], Awaitable[None]]


async def _wait(done: asyncio.Event, seconds: float) -> None:
    # Ends on the event, not only on cancellation: a cancel that lands inside a Redis call can
    # be swallowed by the client, and the loop would then never end.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), seconds)


async def supervise(
    duty: Duty, done: asyncio.Event, on_give_up: Callable[[str, BaseException], None]
) -> None:
    """Run `duty` every period until `done` is set, as the module docstring says."""
    failures = 0
    outage = False
    while not done.is_set():
        delay = duty.period_s
        try:
            await duty.run()
        except RedisError as error:
            if not outage:
                log.warning("agent.duty_redis_error", duty=duty.name, error=type(error).__name__)
            else:
                log.debug("agent.duty_redis_error", duty=duty.name, error=type(error).__name__)
            outage = True
        except Exception as error:
            failures += 1
            log.exception("agent.duty_failed", duty=duty.name, failures=failures)
            if failures >= MAX_CONSECUTIVE_FAILURES:
                log.critical("agent.duty_gave_up", duty=duty.name, failures=failures)
                on_give_up(duty.name, error)
                return
            delay = min(duty.period_s * 2**failures, MAX_BACKOFF_S)
        else:
            if outage:
                log.info("agent.duty_recovered", duty=duty.name)
            outage = False
            failures = 0
        await _wait(done, delay)
