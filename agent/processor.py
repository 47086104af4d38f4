"""What the agent does with one stream entry: decide which job it speaks for, check it through
the security layers, run it, and record the outcome (docs/architecture.md §6).

Every write goes through the event store's atomic step; the stream entry is acknowledged in
the same step as the job's terminal event or retry schedule, and outcome writes are shielded
from cancellation so a shutdown can never cut one in half. A job that cannot be continued
safely is failed with its reason, never left stuck; an entry that speaks for no job goes to
`prov:dead` and is acknowledged, so the queue keeps flowing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from agent.applock import AppLocks
from agent.checks import CheckedJob, check_job, check_whitelist
from agent.execution import RunningJob, execute, home_directory
from agent.metrics import AgentMetrics
from agent.sandbox import sweep_job_processes
from agent.steps import Fields, JobSteps
from core.errors import EnvelopeError, JobRejected, MalformedEnvelope, TransitionError
from core.keyring import KeyRing
from core.keys import AGENTS_GROUP
from core.reasons import Reason
from core.retry import (
    AgentLost,
    Exited,
    Fail,
    Outcome,
    Retry,
    RetryPolicy,
    Signalled,
    Succeed,
    decide,
)
from core.runtime.settings import AgentSettings
from core.signing import Envelope, peek_job_id, read_stream_fields, verify_envelope
from statemachine.machine import (
    QUEUED,
    RETRY_WAIT,
    RUNNING,
    TERMINAL_STATES,
    VALIDATED,
    VERIFIED,
    Trigger,
)
from statemachine.store import (
    AckEntry,
    AppendEntry,
    EventStore,
    ScheduleRetry,
    SetJobFields,
    SideEffect,
    Step,
    Unschedule,
)

log = structlog.get_logger("agent.processor")


def _outcome_detail(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Exited):
        return {"exit_code": outcome.code}
    if isinstance(outcome, Signalled):
        return {"signal": outcome.signal}
    return {}


class JobProcessor:
    """Handles delivered entries of one target's stream for one agent."""

    def __init__(
        self,
        client: aioredis.Redis,
        store: EventStore,
        ring: Callable[[], KeyRing],
        settings: AgentSettings,
        *,
        clock_s: Callable[[], float] = time.time,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._client = client
        self._store = store
        self._keys = store.keys
        self._ring_source = ring
        self._settings = settings
        self._clock_s = clock_s
        self._stream = self._keys.jobs_stream(settings.target)
        self._actor = f"agent:{settings.agent_id}"
        self._app_locks = AppLocks()
        self._metrics = metrics or AgentMetrics(agent_id=settings.agent_id, target=settings.target)
        self._home = home_directory()
        self._steps = JobSteps(client, store, settings, clock_s=clock_s, metrics=self._metrics)
        self.running: dict[str, RunningJob] = {}
        # Told an entry's id when its installer has exited (before the outcome is written).
        self.on_installer_exit: Callable[[str], None] = lambda _entry_id: None

    def lease_lost(self, entry_id: str) -> None:
        """Another agent took `entry_id`: stop its run here and record nothing for it."""
        for job in self.running.values():
            if job.entry_id == entry_id:
                job.lease_lost = True
                job.cancel.set()

    # --- entry point ------------------------------------------------------------------------

    async def process(
        self,
        entry_id: str,
        fields: Fields,
        *,
        deliveries: int,
        snapshot: Mapping[str, str] | None = None,
    ) -> None:
        """Take one entry as far as it goes: an outcome, a retry, or the dead letters.

        `snapshot` is the job's, when it was read with the entry; it is used only if it is
        the snapshot of the job this entry names.
        """
        try:
            signed = read_stream_fields(fields)
            job_id = peek_job_id(signed.envelope_bytes)
        except MalformedEnvelope as error:
            await self._steps.dead_letter(entry_id, fields, Reason.MALFORMED, error.problem)
            return
        if not snapshot or snapshot.get("job_id") != job_id:
            snapshot = await self._store.snapshot(job_id)
        if snapshot is None:
            await self._steps.dead_letter(entry_id, fields, Reason.UNKNOWN_JOB, f"no job {job_id}")
            return
        with structlog.contextvars.bound_contextvars(
            job_id=job_id, app_id=snapshot.get("app_id", ""), entry_id=entry_id
        ):
            state = snapshot.get("state", "")
            if state == QUEUED:
                await self._take_queued(
                    job_id,
                    entry_id,
                    signed.envelope_bytes,
                    signed.sig,
                    signed.kid,
                    snapshot,
                    deliveries,
                )
            elif snapshot.get("entry_id") == "" and state in TERMINAL_STATES:
                # The job ended before any agent took an entry for it (cancelled while
                # queued): its entry has nothing left to do.
                log.info("entry.job_already_ended", state=state)
                await self._steps.ack(entry_id)
            elif snapshot.get("entry_id") != entry_id:
                # Only the entry recorded when the job left `queued` may continue it.
                await self._steps.dead_letter(
                    entry_id,
                    fields,
                    Reason.REPLAYED,
                    f"job {job_id} is {state} and carried by another entry",
                )
            elif state in TERMINAL_STATES:
                await self._steps.ack(entry_id)
            else:
                await self._resume(
                    job_id,
                    entry_id,
                    signed.envelope_bytes,
                    signed.sig,
                    signed.kid,
                    snapshot,
                    deliveries,
                )

    # --- layer 1 and the decision which step comes next --------------------------------------

    async def _take_queued(
        self,
        job_id: str,
        entry_id: str,
        envelope_bytes: bytes,
        sig: str,
        kid: str,
        snapshot: Mapping[str, str],
        deliveries: int,
    ) -> None:
        if await self._ended_as_poison(job_id, QUEUED, entry_id, deliveries):
            return
        if snapshot.get("cancel_requested") == "1":
            await self._finish(job_id, QUEUED, Fail(Reason.CANCELLED), entry_id)
            return
        try:
            envelope = verify_envelope(
                envelope_bytes, sig, kid, self._ring_source(), now=int(self._clock_s())
            )
            self._check_envelope_matches(envelope, snapshot)
        except EnvelopeError as error:
            log.warning("job.refused", layer="signature", reason=error.reason, problem=str(error))
            await self._finish(
                job_id, QUEUED, Fail(error.reason), entry_id, detail={"problem": str(error)}
            )
            return
        taken = await self._start_at_once(job_id, entry_id, envelope, kid, snapshot)
        if taken is True:
            return
        if taken is None:
            # Another actor changed the job between our read and the atomic step: look
            # again, and take the step-by-step path if it is still ours to take.
            fresh = await self._store.snapshot(job_id)
            if fresh is None or fresh.get("state") != QUEUED or fresh.get("entry_id"):
                if fresh is not None and fresh.get("state") in TERMINAL_STATES:
                    await self._steps.ack(entry_id)
                return
            snapshot = fresh
            if snapshot.get("cancel_requested") == "1":
                await self._finish(job_id, QUEUED, Fail(Reason.CANCELLED), entry_id)
                return
        applied = await self._steps.transition(
            job_id,
            Trigger.VERIFY,
            QUEUED,
            entry_id=entry_id,
            detail={"entry_id": entry_id, "kid": kid},
            effects=[SetJobFields({"entry_id": entry_id})],
            known=snapshot,
        )
        if applied is not None:
            await self._continue(job_id, entry_id, envelope, applied, deliveries)

    async def _start_at_once(
        self,
        job_id: str,
        entry_id: str,
        envelope: Envelope,
        kid: str,
        snapshot: Mapping[str, str],
    ) -> bool | None:
        """Verify, validate and start a queued job in ONE atomic step, and run it.

        The step-by-step path records the same three events with a round trip each, and
        reads the job again once it holds the app. It is needed when the checks refuse the
        job (its `verify` is recorded before the refusal) or when the app is busy (the wait
        may be long, so the job and its files are looked at again after it). Here the checks
        passed and the app was free at once, and the atomic step itself checks that the job
        is still queued, at the event the checks saw, carried by no entry and not asked to
        cancel. True when the job was taken here; False when the step-by-step path must
        take it; None when another actor changed the job first (nothing was written).
        """
        attempt = int(snapshot.get("attempt", "0") or "0") + 1
        if attempt > 1:
            return False  # a rerun sweeps what an earlier run left: the step-by-step path
        try:
            checked = check_job(self._settings.common.installers_dir, envelope, self._ring_source())
        except JobRejected:
            return False
        manifest = checked.manifest
        async with self._app_locks.hold_if_free(manifest.id) as held:
            if not held:
                return False
            steps = [
                Step(
                    Trigger.VERIFY,
                    {"entry_id": entry_id, "kid": kid},
                    effects=[SetJobFields({"entry_id": entry_id})],
                ),
                Step(Trigger.VALIDATE),
                Step(Trigger.START, {"entry_id": entry_id, "script": manifest.script}, attempt),
            ]
            try:
                # Built once, so that a resend after a lost answer sends the same events.
                prepared = await self._store.prepare(
                    job_id,
                    steps,
                    actor=self._actor,
                    expect_state=QUEUED,
                    expect_fields={"entry_id": "", "cancel_requested": "0"},
                    known=snapshot,
                )
                applied = await self._steps.through_outages(
                    lambda: self._store.apply(prepared), Trigger.START
                )
            except TransitionError as error:
                log.info("job.transition_lost", trigger=Trigger.START, problem=str(error))
                return None
            await self._run_started(job_id, entry_id, checked, attempt, applied.snapshot)
        return True

    async def _ended_as_poison(
        self, job_id: str, state: str, entry_id: str, deliveries: int
    ) -> bool:
        """Fail the job as `poison` when its entry was delivered too often; True if so."""
        if deliveries <= self._settings.max_deliveries:
            return False
        await self._finish(
            job_id,
            state,
            Fail(Reason.POISON),
            entry_id,
            detail={"problem": f"delivered {deliveries} times without an outcome"},
        )
        return True

    def _check_envelope_matches(self, envelope: Envelope, snapshot: Mapping[str, str]) -> None:
        if envelope.app_id != snapshot.get("app_id") or envelope.target != snapshot.get("target"):
            raise MalformedEnvelope("envelope names another app or target than the job")
        if envelope.target != self._settings.target:
            raise MalformedEnvelope(f"envelope is for target {envelope.target!r}")

    async def _resume(
        self,
        job_id: str,
        entry_id: str,
        envelope_bytes: bytes,
        sig: str,
        kid: str,
        snapshot: Mapping[str, str],
        deliveries: int,
    ) -> None:
        state = snapshot.get("state", "")
        if await self._ended_as_poison(job_id, state, entry_id, deliveries):
            return
        try:
            # The job left `queued` under this very entry, so its age no longer matters.
            envelope = verify_envelope(
                envelope_bytes,
                sig,
                kid,
                self._ring_source(),
                now=int(self._clock_s()),
                enforce_expiry=False,
            )
        except EnvelopeError as error:
            await self._finish(
                job_id, state, Fail(error.reason), entry_id, detail={"problem": str(error)}
            )
            return
        await self._continue(job_id, entry_id, envelope, snapshot, deliveries)

    async def _continue(
        self,
        job_id: str,
        entry_id: str,
        envelope: Envelope,
        snapshot: Mapping[str, str],
        deliveries: int,
    ) -> None:
        state = snapshot.get("state", "")
        attempt = int(snapshot.get("attempt", "0") or "0")
        if state == RUNNING:
            await self._agent_lost(job_id, entry_id, envelope, attempt)
            return
        if snapshot.get("cancel_requested") == "1":
            await self._finish(job_id, state, Fail(Reason.CANCELLED), entry_id)
            return
        try:
            checked = check_job(self._settings.common.installers_dir, envelope, self._ring_source())
        except JobRejected as error:
            log.warning("job.refused", reason=error.reason, problem=error.problem)
            detail: dict[str, Any] = {"problem": error.problem}
            if error.errors:
                detail["errors"] = error.errors
            await self._finish(job_id, state, Fail(error.reason), entry_id, detail=detail)
            return
        if state == VERIFIED:
            applied = await self._steps.transition(
                job_id, Trigger.VALIDATE, VERIFIED, entry_id=entry_id, known=snapshot
            )
            if applied is None:
                return
            state = VALIDATED
        if state in (VALIDATED, RETRY_WAIT):
            await self._run(job_id, entry_id, checked, state, attempt + 1)

    async def _agent_lost(
        self, job_id: str, entry_id: str, envelope: Envelope, attempt: int
    ) -> None:
        """A job found `running` on (re)delivery: its agent died mid-run."""
        try:
            manifest = check_whitelist(
                self._settings.common.installers_dir, envelope.app_id
            ).manifest
        except JobRejected:
            manifest = None
        policy = manifest.retry if manifest is not None else RetryPolicy(max_retries=0)
        idempotent = manifest.idempotent if manifest is not None else False
        decision = decide(policy, attempt, AgentLost(), idempotent=idempotent)
        log.warning("job.agent_lost", attempt=attempt, decision=type(decision).__name__)
        await self._finish(
            job_id,
            RUNNING,
            decision,
            entry_id,
            detail={"reason": Reason.AGENT_LOST},
            attempt=attempt,
        )

    # --- running --------------------------------------------------------------------------

    async def _run(
        self, job_id: str, entry_id: str, checked: CheckedJob, state: str, attempt: int
    ) -> None:
        manifest = checked.manifest
        # Two jobs of one app never run at once on this host: package managers lock.
        async with self._app_locks.hold(manifest.id):
            fresh = await self._store.snapshot(job_id)
            if fresh is None or fresh.get("state") != state or fresh.get("entry_id") != entry_id:
                return  # moved on while we waited for the app (cancelled, most likely)
            if fresh.get("cancel_requested") == "1":
                await self._finish(job_id, state, Fail(Reason.CANCELLED), entry_id)
                return
            try:
                # Waiting for the app may have taken minutes: check again that the files
                # on disk are still the ones the panel validated against.
                checked = check_job(
                    self._settings.common.installers_dir,
                    checked.envelope,
                    self._ring_source(),
                )
            except JobRejected as error:
                await self._finish(
                    job_id, state, Fail(error.reason), entry_id, detail={"problem": error.problem}
                )
                return
            if attempt > 1:
                swept = await sweep_job_processes(job_id)
                if swept:
                    log.warning("job.orphans_killed", pids=list(swept))
            effects: list[SideEffect] = (
                [Unschedule(self._keys.retry, job_id)] if state == RETRY_WAIT else []
            )
            started = await self._steps.transition(
                job_id,
                Trigger.START,
                state,
                entry_id=entry_id,
                attempt=attempt,
                detail={"entry_id": entry_id, "script": manifest.script},
                effects=effects,
                known=fresh,
            )
            if started is None:
                return
            await self._run_started(job_id, entry_id, checked, attempt, started)

    async def _run_started(
        self,
        job_id: str,
        entry_id: str,
        checked: CheckedJob,
        attempt: int,
        started: Mapping[str, str],
    ) -> None:
        """Run a job this agent has just recorded as `running` (holding its app), and decide."""
        manifest = checked.manifest
        self._metrics.started(manifest.id)
        with structlog.contextvars.bound_contextvars(attempt=attempt):
            running = RunningJob(job_id, entry_id)
            outcome, duration_s, log_tail = await self._execute(running, checked, attempt)
            if running.lease_lost:
                # Another agent owns the job now; whatever we would write is stale.
                log.warning("job.outcome_dropped", reason="lease lost")
                return
            self._metrics.ran(manifest.id, duration_s)
            decision = decide(manifest.retry, attempt, outcome, idempotent=manifest.idempotent)
            detail = {**_outcome_detail(outcome), "duration_s": round(duration_s, 3)}
            log.info(
                "job.finished",
                outcome=type(outcome).__name__,
                decision=type(decision).__name__,
                **detail,
            )
            await self._finish(
                job_id,
                RUNNING,
                decision,
                entry_id,
                detail=detail,
                attempt=attempt,
                known=started,
                log_tail=log_tail,
            )

    async def _execute(
        self, running: RunningJob, checked: CheckedJob, attempt: int
    ) -> tuple[Outcome, float, list[dict[str, str]]]:
        """Run the installer (and its verify probe) as `agent.execution` does, registered as
        running here until the installer exits."""
        self.running[running.job_id] = running

        def exited() -> None:
            self.running.pop(running.job_id, None)
            self.on_installer_exit(running.entry_id)

        return await execute(
            running,
            checked,
            attempt,
            client=self._client,
            log_key=self._keys.job_log(running.job_id),
            home=self._home,
            kill_grace_s=self._settings.kill_grace_s,
            on_exit=exited,
        )

    async def _write_log_lines(self, job_id: str, lines: list[dict[str, str]]) -> None:
        """Write handed-over log lines on their own (their outcome step was not recorded)."""
        if not lines:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for fields in lines:
                    pipe.xadd(self._keys.job_log(job_id), fields)  # type: ignore[arg-type]
                await asyncio.shield(pipe.execute())
        except (RedisError, OSError) as error:
            log.warning("job.log_incomplete", error=str(error))

    # --- writing outcomes -------------------------------------------------------------------

    async def _finish(
        self,
        job_id: str,
        state: str,
        decision: Succeed | Retry | Fail,
        entry_id: str,
        *,
        detail: Mapping[str, Any] | None = None,
        attempt: int | None = None,
        known: Mapping[str, str] | None = None,
        log_tail: list[dict[str, str]] | None = None,
    ) -> None:
        """Record a decision and acknowledge the entry in the same atomic step.

        `attempt`, for the outcome of a run, must still be the job's attempt when the step
        happens: only the run that is current may decide the job. `known` is the snapshot
        this agent's own last step left, if it has one (see `EventStore.transition`).
        `log_tail`, the run's last log entries, are written in the same step, or on their
        own if the step is not recorded.
        """
        lines = [AppendEntry(self._keys.job_log(job_id), fields) for fields in log_tail or []]
        ack = AckEntry(self._stream, AGENTS_GROUP, entry_id)
        extra = dict(detail or {})
        run: dict[str, Any] = {"run_attempt": attempt, "known": known}
        applied: dict[str, str] | None = None
        try:
            applied = await self._record_decision(
                job_id, state, decision, entry_id, extra, run, [*lines, ack]
            )
        finally:
            # The step not recorded (lost to another actor, a Redis error, a stop): the lines
            # are written on their own, so the run's output is not lost with it.
            if applied is None and log_tail:
                await self._write_log_lines(job_id, log_tail)  # its write is shielded
        if applied is not None:  # counted once, by the actor whose step was recorded
            self._metrics.decided(applied.get("app_id", ""), decision)

    async def _record_decision(
        self,
        job_id: str,
        state: str,
        decision: Succeed | Retry | Fail,
        entry_id: str,
        extra: dict[str, Any],
        run: dict[str, Any],
        effects: list[SideEffect],
    ) -> dict[str, str] | None:
        """The decision's transition, with `effects` (the log's last lines and the ACK)."""
        if isinstance(decision, Succeed):
            return await self._steps.transition(
                job_id,
                Trigger.SUCCEED,
                state,
                entry_id=entry_id,
                detail=extra,
                effects=effects,
                **run,
            )
        if isinstance(decision, Retry):
            next_retry_at = int((self._clock_s() + decision.delay_s) * 1000)
            extra.update(
                reason=decision.reason, delay_s=decision.delay_s, next_retry_at=next_retry_at
            )
            return await self._steps.transition(
                job_id,
                Trigger.RETRY,
                state,
                entry_id=entry_id,
                detail=extra,
                effects=[*effects, ScheduleRetry(self._keys.retry, next_retry_at, job_id)],
                **run,
            )
        extra["reason"] = str(decision.reason)
        trigger = Trigger.CANCEL if decision.reason == Reason.CANCELLED else Trigger.FAIL
        return await self._steps.transition(
            job_id, trigger, state, entry_id=entry_id, detail=extra, effects=effects, **run
        )
