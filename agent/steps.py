"""How the agent writes a job's steps: each one shielded, sent again through Redis outages,
and pinned to the entry and attempt of the run that writes it (docs/architecture.md §4, §6).

Also the two writes on a stream entry alone: its acknowledgement, and its move to the
dead-letter stream `prov:dead` when it speaks for no job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent.metrics import AgentMetrics
from core.errors import TransitionError
from core.keys import AGENTS_GROUP
from core.runtime.settings import AgentSettings
from core.text import as_text_lenient
from statemachine.machine import QUEUED, TERMINAL_STATES
from statemachine.store import EventStore, SideEffect, Step

log = structlog.get_logger("agent.processor")

# A step that met a Redis outage is sent again, waiting up to this long between tries.
STEP_RETRY_CAP_S: Final = 1.0
# Dead letters keep enough of a bad entry to investigate, never an unbounded copy.
MAX_DEAD_FIELD_BYTES: Final = 16 * 1024

Fields = Mapping[bytes | str, bytes | str]
_T = TypeVar("_T")


class JobSteps:
    """The writes of one agent on one target's stream."""

    def __init__(
        self,
        client: aioredis.Redis,
        store: EventStore,
        settings: AgentSettings,
        *,
        clock_s: Callable[[], float] = time.time,
        metrics: AgentMetrics,
    ) -> None:
        self._client = client
        self._store = store
        self._keys = store.keys
        self._settings = settings
        self._clock_s = clock_s
        self._metrics = metrics
        self._stream = self._keys.jobs_stream(settings.target)
        self._actor = f"agent:{settings.agent_id}"

    async def through_outages(self, step: Callable[[], Awaitable[_T]], trigger: str) -> _T:
        """Run one shielded step, sending it again while Redis is unreachable.

        Giving up would leave the entry to be reclaimed after the lease, where the job,
        still `running`, reads as `agent_lost` and runs again although its run had ended
        (found by the chaos suite, scenario 3). Sending it again is safe: a write sends the
        same prepared events each time (`EventStore.prepare`), so if the lost try did land,
        the store recognises its own write instead of reporting a conflict. A stop that
        cancels the job ends the wait; the entry is then reclaimed as before.
        """
        delay = 0.1
        while True:
            try:
                return await asyncio.shield(step())
            except (RedisConnectionError, RedisTimeoutError) as error:
                log.warning("job.step_retry", trigger=trigger, error=str(error), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, STEP_RETRY_CAP_S)

    async def transition(
        self,
        job_id: str,
        trigger: str,
        expect_state: str,
        *,
        entry_id: str,
        detail: Mapping[str, Any] | None = None,
        attempt: int | None = None,
        effects: list[SideEffect] | None = None,
        run_attempt: int | None = None,
        known: Mapping[str, str] | None = None,
    ) -> dict[str, str] | None:
        """One shielded transition; None when another actor moved the job first.

        Inside the atomic step the job must still be carried by `entry_id` (by no entry yet,
        while queued) and, with `run_attempt`, still be on that attempt: an agent cut off
        past its lease can then never write over the run that replaced its own.

        When the other actor ended the job (the panel cancelling a job we had not started),
        nothing is left to do with our entry, so it is acknowledged rather than left to be
        reclaimed and looked at again.
        """
        expected = {"entry_id": "" if expect_state == QUEUED else entry_id}
        if run_attempt is not None:
            expected["attempt"] = str(run_attempt)
        try:
            prepared = await self.through_outages(
                lambda: self._store.prepare(
                    job_id,
                    [Step(trigger, detail or {}, attempt, effects or [])],
                    actor=self._actor,
                    expect_state=expect_state,
                    expect_fields=expected,
                    known=known,
                ),
                trigger,
            )
            applied = await self.through_outages(lambda: self._store.apply(prepared), trigger)
        except TransitionError as error:
            log.info("job.transition_lost", trigger=trigger, problem=str(error))
            job = await self._store.read(job_id)
            if job is not None and job.state in TERMINAL_STATES:
                await self.ack(entry_id)
            return None
        return applied.snapshot

    async def ack(self, entry_id: str) -> None:
        await self._client.xack(self._stream, AGENTS_GROUP, entry_id)

    async def dead_letter(self, entry_id: str, fields: Fields, reason: str, problem: str) -> None:
        """Park an entry that speaks for no job in `prov:dead` and acknowledge it, atomically."""
        log.warning("entry.dead_letter", entry_id=entry_id, reason=reason, problem=problem)
        record: dict[str, str] = {
            "reason": str(reason),
            "problem": problem,
            "stream": self._stream,
            "entry_id": entry_id,
            "agent": self._settings.agent_id,
            "at": str(int(self._clock_s() * 1000)),
        }
        for key, value in fields.items():
            name = "field:" + as_text_lenient(key)[:64]
            record[name] = as_text_lenient(value)[:MAX_DEAD_FIELD_BYTES]
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(self._keys.dead, record)  # type: ignore[arg-type]
            pipe.xack(self._stream, AGENTS_GROUP, entry_id)
            await asyncio.shield(pipe.execute())
        self._metrics.rejected(reason, job_ended=False)
