"""The agent daemon: one consumer of `prov:jobs:<target>` in group `agents`.

The loop reads like docket's worker: reclaim entries idle past the lease (their agent died),
read new ones with a blocking XREADGROUP kept well under the socket timeout, run each entry as
a task within the concurrency limit, renew the lease of every entry it holds, re-queue due
retries, beat its heart in `prov:agents`, and watch running jobs for cancellation. Redis errors
never kill it: it backs off and reconnects. `stop()` stops taking work and lets running jobs
finish within the grace period; `stop(immediate=True)` (a second signal) cancels them, which
kills their process groups and leaves their entries to be reclaimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agent.duties import Duty, supervise
from agent.metrics import AgentMetrics
from agent.processor import JobProcessor
from agent.queue import JobQueue
from agent.steps import Fields
from core import __version__
from core.errors import DutyFailed, TransitionError
from core.keyring import KeyRing
from core.keys import AGENTS_GROUP, RedisKeys
from core.reasons import Reason
from core.retry import Fail
from core.runtime.catalogue import Catalogue
from core.runtime.settings import AgentSettings
from core.text import as_text
from statemachine.machine import QUEUED, RETRY_WAIT, TERMINAL_STATES_RAW, Trigger
from statemachine.snapshot import JobSnapshot
from statemachine.store import EventStore, Unschedule, now_ms

log = structlog.get_logger("agent")

# redis-py's stream replies are loosely typed; these are their shapes with bytes responses.
StreamEntry = tuple[bytes, dict[bytes | str, bytes | str]]
ReadReply = list[tuple[bytes, list[StreamEntry]]]

REQUEUE_PAGE: Final = 100
DUTY_STOP_S: Final = 5.0
EXPIRY_PAGE: Final = 1000
EXPIRY_SWEEP_S: Final = 30.0
# Envelope lifetimes are at most 30 days (PROV_JOB_TTL_S); older jobs cannot still be queued.
EXPIRY_WINDOW_MS: Final = 31 * 86_400_000
# The expiry sweep reads again only jobs newer than this, or older but unfinished (see
# _expire_queued): margin for a panel whose clock is behind ours.
EXPIRY_RESCAN_MS: Final = 10 * 60_000
# Between two pages of one sweep: an agent's first sweep reads every job of the window, and
# must not take Redis and the job path away from the jobs while it does.
EXPIRY_PAGE_PAUSE_S: Final = 0.5
CATALOGUE_REFRESH_S: Final = 30.0
READ_BLOCK_MS: Final = 2000  # well under the client's socket timeout
# Idle entries are looked for at most this often (and at least every lease/4): on every read
# it was one round trip in ten of a busy agent's job path, for entries that only appear when
# an agent dies, and are reclaimed after a whole lease anyway.
RECLAIM_EVERY_S: Final = 1.0
HEARTBEAT_S: Final = 3.0
SCHEDULER_S: Final = 0.5
CANCEL_POLL_S: Final = 0.5
MAX_BACKOFF_S: Final = 5.0


class Agent:
    """Takes jobs for one target from Redis and runs them; `run()` until `stop()`."""

    def __init__(
        self,
        settings: AgentSettings,
        client: aioredis.Redis,
        ring: Callable[[], KeyRing],
        *,
        metrics: AgentMetrics | None = None,
    ) -> None:
        """`ring` returns the current key ring (it may be reloaded as keys rotate)."""
        self._settings = settings
        self.metrics = metrics or AgentMetrics(agent_id=settings.agent_id, target=settings.target)
        self._client = client
        self._store = EventStore(client, RedisKeys(settings.common.namespace), ring)
        self._keys = self._store.keys
        self._queue = JobQueue(client, self._keys)
        self._stream = self._keys.jobs_stream(settings.target)
        self._consumer = settings.agent_id
        self._processor = JobProcessor(client, self._store, ring, settings, metrics=self.metrics)
        self.metrics.count_running(lambda: len(self._processor.running))
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        # Entries whose task holds one of the `concurrency` slots: from the read until its
        # installer exits. Writing the outcome happens outside the slot, so the next job's
        # read and start overlap it instead of waiting for another round trip.
        self._occupying: set[str] = set()
        self._slot_freed = asyncio.Event()
        self._reading: asyncio.Future[Any] | None = None  # the blocking read, while one runs
        self._processor.on_installer_exit = self._release_slot
        self._stopping = asyncio.Event()
        self._duties_done = asyncio.Event()
        self._started_at = now_ms()
        self._lease_ms = int(settings.lease_s * 1000)
        self._apps: list[str] | None = None
        self._apps_loaded_at = 0.0
        self._expiry_floor_ms = 0
        self._next_reclaim_at = 0.0
        self._broken_duty: tuple[str, BaseException] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def stop(self, *, immediate: bool = False) -> None:
        """Stop taking jobs; with `immediate`, also cancel the running ones now."""
        if not self._stopping.is_set():
            log.info("agent.stopping", running=sorted(self._processor.running))
        self._stopping.set()
        self._slot_freed.set()  # wakes a read loop waiting for a slot
        if self._reading is not None:
            self._reading.cancel()
        if immediate:
            for task in self._in_flight.values():
                task.cancel()

    async def run(self) -> None:
        """Consume until stopped, then drain within the grace period."""
        log.info(
            "agent.started",
            agent_id=self._consumer,
            target=self._settings.target,
            concurrency=self._settings.concurrency,
            version=__version__,
        )
        duties = [
            Duty("heartbeat", HEARTBEAT_S, self._heartbeat),
            Duty("lease", self._settings.lease_s / 3, self._renew_leases),
            Duty("scheduler", SCHEDULER_S, self._requeue_due),
            Duty("cancel", CANCEL_POLL_S, self._watch_cancels),
            Duty("expiry", EXPIRY_SWEEP_S, self._expire_queued),
        ]
        helpers = [
            asyncio.create_task(
                supervise(duty, self._duties_done, self._duty_gave_up), name=duty.name
            )
            for duty in duties
        ]
        try:
            await self._consume()
            await self._drain()
        finally:
            self._duties_done.set()
            for helper in helpers:
                helper.cancel()
            _done, stuck = await asyncio.wait(helpers, timeout=DUTY_STOP_S)
            if stuck:
                log.warning("agent.duties_stuck", duties=[task.get_name() for task in stuck])
            await self._say_goodbye()
            log.info("agent.stopped")
        if self._broken_duty is not None:
            name, error = self._broken_duty
            raise DutyFailed(name, error)

    def _duty_gave_up(self, name: str, error: BaseException) -> None:
        """A duty keeps failing: stop taking jobs, drain, and end `run` with DutyFailed."""
        if self._broken_duty is None:
            self._broken_duty = (name, error)
        self.stop()

    async def _drain(self) -> None:
        if not self._in_flight:
            return
        grace = self._settings.shutdown_grace_s
        log.info("agent.draining", jobs=len(self._in_flight), grace_s=grace)
        _done, pending = await asyncio.wait(list(self._in_flight.values()), timeout=grace)
        for task in pending:
            task.cancel()  # the runner kills the process group; the entry stays for reclaim
        if pending:
            await asyncio.wait(pending)

    # --- consuming ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        backoff = 0.1
        first = True
        while not self._stopping.is_set():
            try:
                if first:
                    await self._ensure_group()
                    await self._resume_own_pending()
                    first = False
                await self._reclaim_idle()
                await self._read_new()
                backoff = 0.1
            except ResponseError as error:
                if "NOGROUP" in str(error):
                    first = True  # the stream or group vanished (e.g. FLUSHALL): recreate
                    continue
                log.error("agent.redis_error", error=str(error))
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except (RedisConnectionError, RedisTimeoutError, OSError) as error:
                log.warning("agent.redis_unreachable", error=str(error), retry_in_s=backoff)
                self._defer_reclaim()
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _defer_reclaim(self) -> None:
        """Take no idle entries for one lease: Redis was unreachable or stalled.

        Redis counts an entry's idle time through an outage, so right after one every entry
        looks lapsed, those of live agents included, which could not renew meanwhile. Found
        by the chaos suite (scenario 4, Redis paused past the lease): another agent's reclaim
        could land before the owner's renewal, and a running job was rerun as agent_lost.
        The owners renew within a third of a lease; an agent that did die is reclaimed one
        lease later, which only costs time.
        """
        until = asyncio.get_running_loop().time() + self._settings.lease_s
        self._next_reclaim_at = max(self._next_reclaim_at, until)

    def _note_call_time(self, started: float, expected_s: float) -> None:
        """Defer reclaims when a Redis call took far longer than it should (a stalled server
        answers late, without any error)."""
        if asyncio.get_running_loop().time() - started > expected_s + self._settings.lease_s / 2:
            self._defer_reclaim()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    def _free_slots(self) -> int:
        return self._settings.concurrency - len(self._occupying)

    def _release_slot(self, entry_id: str) -> None:
        if entry_id in self._occupying:
            self._occupying.discard(entry_id)
            self._slot_freed.set()

    async def _wait_for_slot(self) -> None:
        while self._free_slots() <= 0 and not self._stopping.is_set():
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _ensure_group(self) -> None:
        try:
            await self._client.xgroup_create(self._stream, AGENTS_GROUP, id="0", mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def _resume_own_pending(self) -> None:
        """Entries this consumer name held in a previous life (a stable PROV_AGENT_ID)."""
        reply = cast(
            ReadReply | None,
            await self._client.xreadgroup(
                AGENTS_GROUP, self._consumer, {self._stream: "0"}, count=1000
            ),
        )
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                await self._wait_for_slot()
                if self._stopping.is_set():
                    return
                await self._dispatch(as_text(entry_id), fields, from_claim=True)

    async def _reclaim_idle(self) -> None:
        if self._free_slots() <= 0:
            return
        now = asyncio.get_running_loop().time()
        if now < self._next_reclaim_at:
            return
        self._next_reclaim_at = now + min(RECLAIM_EVERY_S, self._settings.lease_s / 4)
        reply = await self._client.xautoclaim(
            self._stream,
            AGENTS_GROUP,
            self._consumer,
            min_idle_time=self._lease_ms,
            start_id="0-0",
            count=self._free_slots(),
        )
        entries = cast(list[tuple[bytes, Fields | None]], reply[1] if len(reply) > 1 else [])
        if len(reply) > 2 and reply[2]:
            # Redis 7 drops entries deleted from the stream from the pending list itself.
            log.warning("entry.deleted_while_pending", entries=[as_text(e) for e in reply[2]])
        for entry_id, fields in entries:
            entry = as_text(entry_id)
            if fields is None:  # Redis 6.2 reports an entry deleted from the stream as nil
                await self._client.xack(self._stream, AGENTS_GROUP, entry)
                continue
            log.warning("entry.reclaimed", entry_id=entry)
            await self._dispatch(entry, fields, from_claim=True)

    async def _read_new(self) -> None:
        await self._wait_for_slot()
        if self._stopping.is_set():
            return
        # While the queue holds entries, one round trip reads them with their jobs'
        # snapshots; only an empty queue needs the blocking read (and the job read after it).
        started = asyncio.get_running_loop().time()
        ready = await self._queue.read_new_entries(
            self._stream, AGENTS_GROUP, self._consumer, self._free_slots()
        )
        self._note_call_time(started, 0.0)
        if self._stopping.is_set():
            # Stopped meanwhile: take nothing more. Entries just read stay pending under our
            # name and are resumed by our next life or reclaimed after the lease.
            return
        if ready:
            for ready_id, ready_fields, snapshot in ready:
                await self._dispatch(ready_id, ready_fields, from_claim=False, snapshot=snapshot)
            return
        read = asyncio.ensure_future(
            self._client.xreadgroup(
                AGENTS_GROUP,
                self._consumer,
                {self._stream: ">"},
                count=self._free_slots(),
                block=READ_BLOCK_MS,
            )
        )
        # stop() cancels it: no need to sit out the blocking read. An entry delivered in
        # that instant stays pending under our name and is reclaimed after the lease.
        self._reading = read
        started = asyncio.get_running_loop().time()
        try:
            reply = cast(ReadReply | None, await read)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are cancelled ourselves, not only the read
            return
        finally:
            self._reading = None
        self._note_call_time(started, READ_BLOCK_MS / 1000)
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                await self._dispatch(as_text(entry_id), fields, from_claim=False)

    async def _dispatch(
        self,
        entry_id: str,
        fields: Fields,
        *,
        from_claim: bool,
        snapshot: Mapping[str, str] | None = None,
    ) -> None:
        if entry_id in self._in_flight:
            # Ours already (handed back by XAUTOCLAIM after an outage): one task per entry.
            return
        deliveries = await self._deliveries(entry_id) if from_claim else 1
        task = asyncio.create_task(
            self._process(entry_id, fields, deliveries, snapshot), name=entry_id
        )
        self._in_flight[entry_id] = task
        self._occupying.add(entry_id)

        def done(_task: asyncio.Task[None]) -> None:
            self._in_flight.pop(entry_id, None)
            self._release_slot(entry_id)

        task.add_done_callback(done)

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self._client.xpending_range(
            self._stream, AGENTS_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _process(
        self,
        entry_id: str,
        fields: Fields,
        deliveries: int,
        snapshot: Mapping[str, str] | None,
    ) -> None:
        try:
            await self._processor.process(
                entry_id, fields, deliveries=deliveries, snapshot=snapshot
            )
        except asyncio.CancelledError:
            log.warning("entry.interrupted", entry_id=entry_id)
            raise
        except RedisError as error:
            # The entry stays pending and is reclaimed after the lease: nothing is lost.
            log.warning("entry.redis_error", entry_id=entry_id, error=str(error))
        except Exception:
            log.exception("entry.crashed", entry_id=entry_id)

    # --- periodic duties ----------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        """Re-claim every entry we hold so no other agent takes a long install.

        An entry another agent took meanwhile (we were cut off past the lease) is not
        taken back: its run here is stopped and its outcome will not be recorded.
        """
        held = list(self._in_flight)
        lost = await self._queue.renew_leases(self._stream, AGENTS_GROUP, self._consumer, held)
        for entry_id in lost:
            if entry_id not in self._in_flight:
                continue  # finished meanwhile
            log.warning("lease.lost", entry_id=entry_id)
            self._processor.lease_lost(entry_id)

    async def _requeue_due(self) -> None:
        """Give each due `retry_wait` job a fresh entry, so an agent starts its next attempt."""
        now = now_ms()
        offset = 0
        # Page through every due job: other targets' due jobs (whose agents may be down)
        # must never hide ours behind them.
        while True:
            due = cast(
                list[bytes],
                await self._client.zrangebyscore(
                    self._keys.retry, "-inf", now, start=offset, num=REQUEUE_PAGE
                ),
            )
            for raw_job_id in due:
                if await self._requeue_one(as_text(raw_job_id), now):
                    offset -= 1  # it left the set: the page shifted under us
            if len(due) < REQUEUE_PAGE:
                return
            offset += len(due)

    async def _requeue_one(self, job_id: str, now: int) -> bool:
        """Re-queue one due job if it is ours; True when it left the retry set."""
        job = await self._store.read(job_id)
        if job is None:
            await self._client.zrem(self._keys.retry, job_id)
            return True
        target = job.target
        if target != self._settings.target:
            return False  # another host's agents re-queue their own jobs
        if job.state == RETRY_WAIT and job.cancel_requested:
            await self._cancel_waiting(job_id)
            return True
        status, why = await self._queue.requeue_due(job_id, target=target, now_ms=now)
        if status == 1:
            log.info("job.requeued", job_id=job_id, entry_id=why)
        elif status < 0:
            await self._fail_unqueueable(job_id, why)
        return True

    async def _cancel_waiting(self, job_id: str) -> None:
        try:
            applied = await self._store.transition(
                job_id,
                Trigger.CANCEL,
                actor=f"agent:{self._consumer}",
                expect_state=RETRY_WAIT,
                detail={"reason": Reason.CANCELLED},
                effects=[Unschedule(self._keys.retry, job_id)],
            )
        except TransitionError as error:
            log.info("job.cancel_lost", job_id=job_id, error=str(error))
            return
        self.metrics.decided(JobSnapshot(applied.snapshot).app_id, Fail(Reason.CANCELLED))

    async def _fail_unqueueable(self, job_id: str, why: str) -> None:
        """A due job whose entry is gone (the stream was trimmed) cannot go on: fail it."""
        try:
            applied = await self._store.transition(
                job_id,
                Trigger.FAIL,
                actor=f"agent:{self._consumer}",
                expect_state=RETRY_WAIT,
                detail={"reason": Reason.MALFORMED, "problem": why},
                effects=[Unschedule(self._keys.retry, job_id)],
            )
        except TransitionError as error:
            log.info("job.fail_lost", job_id=job_id, error=str(error))
            return
        self.metrics.decided(JobSnapshot(applied.snapshot).app_id, Fail(Reason.MALFORMED))

    async def _expire_queued(self) -> None:
        """Fail jobs still queued past their envelope's expiry (docs/architecture.md §3), any
        target.

        An agent fails such a job when it reads the entry; this catches the ones no agent
        reads: a target whose agents are gone, an entry lost to a trimmed stream.

        A finished job never comes back, so the sweep remembers a floor below which every job
        was finished last time and starts there: its cost follows the recent and unfinished
        jobs, not the history (with 200,000 finished jobs, reading them all every 30 s cost
        the job path a third of its throughput and 160 ms at p99). The first sweep of an agent
        still reads the whole window, a page at a time with a pause between pages.
        """
        now = now_ms()
        window_start = max(now - EXPIRY_WINDOW_MS, self._expiry_floor_ms)
        oldest_open = now
        offset = 0
        while True:
            page = cast(
                list[tuple[bytes, float]],
                await self._client.zrangebyscore(
                    self._keys.jobs_index,
                    window_start,
                    now,
                    start=offset,
                    num=EXPIRY_PAGE,
                    withscores=True,
                ),
            )
            ids = [raw for raw, _score in page]
            async with self._client.pipeline(transaction=False) as pipe:
                for raw in ids:
                    pipe.hmget(self._keys.job(as_text(raw)), ["state", "expires_at"])
                rows = cast(list[list[bytes | None]], await pipe.execute()) if ids else []
            for (raw, score), (state, expires_at) in zip(page, rows, strict=True):
                if state is not None and state not in TERMINAL_STATES_RAW:
                    oldest_open = min(oldest_open, int(score))
                if state != QUEUED.encode() or not expires_at or int(expires_at) >= now:
                    continue
                try:
                    await self._store.transition(
                        as_text(raw),
                        Trigger.FAIL,
                        actor=f"agent:{self._consumer}",
                        expect_state=QUEUED,
                        expect_fields={"entry_id": ""},
                        detail={"reason": Reason.EXPIRED, "problem": "no agent took it in time"},
                    )
                    log.warning("job.expired_in_queue", job_id=as_text(raw))
                except TransitionError:
                    continue  # an agent took it meanwhile
                self.metrics.decided("", Fail(Reason.EXPIRED))
            if len(ids) < EXPIRY_PAGE:
                break
            offset += len(ids)
            await asyncio.sleep(EXPIRY_PAGE_PAUSE_S)
        self._expiry_floor_ms = min(oldest_open, now - EXPIRY_RESCAN_MS)

    async def _watch_cancels(self) -> None:
        running = list(self._processor.running.values())
        if not running:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for job in running:
                pipe.hget(self._keys.job(job.job_id), "cancel_requested")
            flags = await pipe.execute()
        for job, flag in zip(running, flags, strict=True):
            if flag in (b"1", "1") and not job.cancel.is_set():
                log.info("job.cancel_seen", job_id=job.job_id)
                job.cancel.set()

    def _app_ids(self) -> list[str]:
        # Loading validates every manifest (patterns included): not on every beat.
        now = asyncio.get_running_loop().time()
        if self._apps is None or now - self._apps_loaded_at > CATALOGUE_REFRESH_S:
            catalogue = Catalogue.load(self._settings.common.installers_dir)
            self._apps = [app.app_id for app in catalogue.valid_apps]
            self._apps_loaded_at = now
        return self._apps

    async def _heartbeat(self) -> None:
        apps = self._app_ids()
        self.metrics.set_apps(apps)
        beat: dict[str, Any] = {
            "agent_id": self._consumer,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "target": self._settings.target,
            "concurrency": self._settings.concurrency,
            "apps": apps,
            "running": sorted(self._processor.running),
            "started_at": self._started_at,
            "last_seen": now_ms(),
            "stopping": self._stopping.is_set(),
        }
        await self._client.hset(self._keys.agents, self._consumer, json.dumps(beat))

    async def _say_goodbye(self) -> None:
        with contextlib.suppress(RedisError):
            await asyncio.shield(self._client.hdel(self._keys.agents, self._consumer))
