"""The forwarder loop: read events, deliver them in order per job, retry, bury, acknowledge.

    prov:events ──EventConsumer (group)──┐
                                         ├─> lane per job ──POST──> receiver
    <group>:redrive ──DeadLetters────────┘        │ 2xx: XACK
                                                  │ retryable: wait (backoff), POST again
                                                  └ permanent / out of attempts: bury

Order: each job has a lane, a queue its events go through one at a time: while an event is
being retried, the job's later events wait behind it, and other jobs' lanes go on. At most
`concurrency` POSTs are in flight at once, and at most `max_in_flight` events are held
unacknowledged, so a slow receiver slows the reading instead of filling memory.

Delivery is at least once: an event is acknowledged only after a 2xx (or its burial), so a
forwarder that dies (even SIGKILL) gets it back when it starts again: first its own pending
entries (same consumer name), then entries idle past `claim_idle_ms` (XAUTOCLAIM). The
attempt count lives in memory only, so a restart begins counting again.

`stop()` ends gracefully: reading stops, a POST in flight finishes and is settled, events
waiting (for their turn or a retry) stay pending in Redis for the next start.

One event never stops the rest: an entry that is no event (malformed, or trimmed from the
stream while pending) becomes a dead letter saying so, and an unexpected error while
delivering one event buries that event with the error's name. Stopping on it instead would
only bring the same event back after the restart, for ever.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from core.keys import RedisKeys
from statemachine.events import Event
from statemachine.integrations.consumer import EventConsumer, Undeliverable
from statemachine.integrations.webhook.deadletter import Burial, DeadLetters, Pending
from statemachine.integrations.webhook.options import ForwarderOptions
from statemachine.integrations.webhook.policy import Bury, Delivered, Outcome, Retry, decide
from statemachine.store import now_ms

log = structlog.get_logger("webhook")

REDIS_RETRY_BASE_S: Final = 0.2
REDIS_RETRY_MAX_S: Final = 10.0
HEALTHY_READ_S: Final = 30.0
# While stopping, a settle (ACK, burial) that keeps failing is given up after this many
# tries: the entry stays pending and comes back at the next start (at least once).
SETTLE_TRIES_WHEN_STOPPING: Final = 5
# Jitter only spreads retries out; the system generator merely avoids a seedable one.
_RANDOM: Final = secrets.SystemRandom()

T = TypeVar("T")


class Sender(Protocol):
    """What the forwarder needs of an HTTP sender."""

    async def send(self, event: Event) -> Outcome:
        """POST one event once."""
        ...


class Forwarder:
    """One forwarder process's work: `run()` until `stop()`."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: RedisKeys,
        options: ForwarderOptions,
        sender: Sender,
        *,
        jitter: Callable[[], float] = _RANDOM.random,
    ) -> None:
        self._client = client
        self._keys = keys
        self._options = options
        self._sender = sender
        self._jitter = jitter
        self._letters = DeadLetters(client, keys, options.group)
        self._stopping = asyncio.Event()
        self._post_slots = asyncio.Semaphore(options.concurrency)
        self._held = asyncio.Semaphore(options.max_in_flight)
        # (source stream, entry id) of every event held: a redelivery of one of them (the
        # group hands back our own entries after a reconnect or an idle claim) is dropped.
        self._holding: set[tuple[str, str]] = set()
        self._lanes: dict[str, deque[Pending]] = {}
        self._lane_tasks: dict[str, asyncio.Task[None]] = {}
        self._failure: BaseException | None = None

    def stop(self) -> None:
        """Stop reading; let POSTs in flight finish; `run()` then returns."""
        self._stopping.set()

    async def run(self) -> None:
        """Forward until stopped; re-raises a bug that stopped it (the process then fails)."""
        readers = [
            self._watched(self._read_events(), "webhook-events"),
            self._watched(self._read_redrive(), "webhook-redrive"),
        ]
        try:
            await self._stopping.wait()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            # Lanes notice the stop themselves: a POST in flight ends and is settled first.
            await asyncio.gather(*self._lane_tasks.values(), return_exceptions=True)
        if self._failure is not None:
            raise self._failure

    def _watched(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A task whose unexpected error stops the forwarder rather than dying unseen.

        Going on without it would be worse: a dead reader reads nothing, and a lane that
        skipped an event would deliver the job's later events before it.
        """
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._check)
        return task

    def _check(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("webhook.crashed", task=task.get_name(), error=repr(error))
        if self._failure is None:
            self._failure = error
        self.stop()

    # --- reading ------------------------------------------------------------------------

    async def _read_events(self) -> None:
        options = self._options
        await self._reading(
            "events",
            lambda: self._events_from(
                EventConsumer(
                    self._client,
                    self._keys,
                    group=options.group,
                    name=options.consumer,
                    filters=options.filters,
                    block_ms=options.block_ms,
                    claim_idle_ms=options.claim_idle_ms,
                    on_undeliverable=self._bury_undeliverable,
                )
            ),
        )

    async def _bury_undeliverable(self, entry: Undeliverable) -> None:
        """An entry of prov:events that is no event: a dead letter saying why, once."""
        burial = await self._settle(
            lambda tries: self._letters.bury_undeliverable(
                # One XAUTOCLAIM already took out of the group is recorded even on a retry:
                # Redis names it only once, so a rare double beats losing it.
                entry,
                even_if_settled=not entry.pending or tries == 1,
            )
        )
        log.warning(
            "webhook.undeliverable",
            stream_id=entry.stream_id,
            reason=entry.reason,
            problem=entry.problem,
            dead_id=burial.dead_id if burial else None,
            **entry.hints,
        )

    async def _events_from(self, consumer: EventConsumer) -> None:
        await consumer.ensure_group(start="0" if self._options.start_from_history else "$")
        async for delivery in consumer.deliveries():
            await self._admit(
                Pending(
                    source=self._keys.events,
                    entry_id=delivery.stream_id,
                    stream_id=delivery.stream_id,
                    event=delivery.event,
                    redriven=False,
                    reread=delivery.redelivered,
                )
            )

    async def _read_redrive(self) -> None:
        await self._reading("redrive", self._redrive_once)

    async def _redrive_once(self) -> None:
        await self._letters.ensure_redrive_group()
        async for item in self._letters.redriven(
            self._options.consumer,
            block_ms=self._options.block_ms,
            claim_idle_ms=self._options.claim_idle_ms,
        ):
            await self._admit(item)

    async def _reading(self, what: str, read: Callable[[], Awaitable[None]]) -> None:
        """Run `read` again and again, pausing with backoff while Redis is unreachable."""
        delay = REDIS_RETRY_BASE_S
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await read()
            except (RedisError, OSError) as error:
                # `read` runs until it fails: one that worked for a while was a fresh outage,
                # which starts again from the shortest wait.
                if time.monotonic() - started > HEALTHY_READ_S:
                    delay = REDIS_RETRY_BASE_S
                # Also NOGROUP (the group was deleted, or Redis lost its data): the next
                # round creates the group again.
                log.warning(
                    "webhook.redis_error",
                    reading=what,
                    error=type(error).__name__,
                    detail=str(error)[:200],
                    retry_in_s=round(delay, 2),
                )
                await self._pause(delay)
                delay = min(delay * 2, REDIS_RETRY_MAX_S)

    async def _admit(self, item: Pending) -> None:
        key = (item.source, item.entry_id)
        if key in self._holding:
            return
        await self._held.acquire()
        try:
            # The batch `item` came in was read before the wait for room (and before the
            # awaits of reading the rest of it): meanwhile a copy held from an earlier read
            # may have been delivered and acknowledged. Sending it again would be a
            # duplicate the forwarder itself made, so an entry read again must still be ours.
            settled = key in self._holding or (
                item.reread and not await self._letters.still_pending(item, self._options.consumer)
            )
        except BaseException:
            self._held.release()
            raise
        if settled:
            self._held.release()
            log.debug("webhook.already_settled", source=item.source, entry_id=item.entry_id)
            return
        self._holding.add(key)
        job_id = item.event.job_id
        self._lanes.setdefault(job_id, deque()).append(item)
        if job_id not in self._lane_tasks:
            self._lane_tasks[job_id] = self._watched(self._lane(job_id), f"webhook-lane-{job_id}")

    # --- delivering ---------------------------------------------------------------------

    async def _lane(self, job_id: str) -> None:
        """Deliver one job's events one after another, in the order they were read."""
        queue = self._lanes[job_id]
        try:
            while queue and not self._stopping.is_set():
                item = queue[0]
                try:
                    await self._deliver(item)
                except Exception as error:
                    # A bug met while handling this one event: bury it (so the job's later
                    # events can go on) rather than stop the forwarder, whose restart would
                    # meet the same event again.
                    await self._bury_after_error(item, error)
                finally:
                    queue.popleft()
                    self._release(item)
        finally:
            # Left in the queue only when stopping: those stay pending in Redis.
            for item in queue:
                self._release(item)
            del self._lanes[job_id]
            del self._lane_tasks[job_id]

    def _release(self, item: Pending) -> None:
        self._holding.discard((item.source, item.entry_id))
        self._held.release()

    async def _deliver(self, item: Pending) -> None:
        event = item.event
        bound = log.bind(
            event_id=event.event_id,
            job_id=event.job_id,
            trigger=event.trigger,
            stream_id=item.stream_id,
            redriven=item.redriven,
        )
        attempt = 0
        while True:
            async with self._post_slots:
                if self._stopping.is_set():
                    return  # not sent: stays pending for the next start
                attempt += 1
                outcome = await self._sender.send(event)
            decision = decide(self._options.policy, attempt, outcome, jitter=self._jitter())
            if isinstance(decision, Delivered):
                was_pending = await self._settle(lambda _tries: self._letters.acknowledge(item))
                bound.info(
                    "webhook.delivered",
                    status=outcome.status,
                    attempt=attempt,
                    # False: already settled (the group was re-created, or an earlier try
                    # of this ACK worked but its answer was lost)
                    was_pending=was_pending,
                )
                return
            if isinstance(decision, Bury):
                await self._bury(item, attempts=attempt, error=decision.error)
                return
            assert isinstance(decision, Retry)
            bound.info(
                "webhook.retry",
                attempt=attempt,
                status=outcome.status,
                error=outcome.error[:200],
                retry_in_s=round(decision.delay_s, 3),
            )
            if await self._pause(decision.delay_s):
                return  # stopping: the event stays pending

    async def _bury_after_error(self, item: Pending, error: Exception) -> None:
        event = item.event
        log.exception(
            "webhook.event_failed",
            event_id=event.event_id,
            job_id=event.job_id,
            stream_id=item.stream_id,
            error=type(error).__name__,
        )
        await self._bury(item, attempts=0, error=f"forwarder error: {type(error).__name__}")

    async def _bury(self, item: Pending, *, attempts: int, error: str) -> None:
        """Bury `item` and log what really happened to it."""
        event = item.event
        burial: Burial | None = await self._settle(
            lambda tries: self._letters.bury(
                item,
                attempts=attempts,
                error=error,
                at_ms=now_ms(),
                # A retry may follow a first try that worked but whose answer was lost.
                even_if_settled=tries == 1,
            )
        )
        bound = log.bind(
            event_id=event.event_id,
            job_id=event.job_id,
            trigger=event.trigger,
            stream_id=item.stream_id,
            redriven=item.redriven,
            attempt=attempts,
            error=error,
        )
        if burial is None:
            bound.warning("webhook.bury_abandoned", problem="stopping; it stays pending")
        elif burial.was_pending:
            bound.warning("webhook.dead", dead_id=burial.dead_id)
        elif burial.dead_id:
            bound.warning(
                "webhook.dead",
                dead_id=burial.dead_id,
                was_pending=False,
                problem="the entry was no longer pending in the group (re-created, or "
                "acknowledged by another consumer); recorded as a dead letter all the same",
            )
        else:
            bound.warning(
                "webhook.dead_not_recorded",
                was_pending=False,
                problem="the entry was no longer pending when a burial was retried after a "
                "lost answer: the first try most likely recorded it already",
            )

    async def _settle(self, step: Callable[[int], Awaitable[T]]) -> T | None:
        """Run an ACK or a burial (given the try number), retrying while Redis is unreachable.

        None when given up while stopping (the entry stays pending).
        """
        delay = REDIS_RETRY_BASE_S
        tries = 0
        while True:
            tries += 1
            try:
                return await step(tries)
            except (RedisError, OSError) as error:
                if self._stopping.is_set() and tries >= SETTLE_TRIES_WHEN_STOPPING:
                    log.warning("webhook.settle_abandoned", error=type(error).__name__)
                    return None
                log.warning(
                    "webhook.redis_error",
                    settling=True,
                    error=type(error).__name__,
                    retry_in_s=round(delay, 2),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, REDIS_RETRY_MAX_S)

    async def _pause(self, seconds: float) -> bool:
        """Sleep `seconds` unless stopped first; True when stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True
