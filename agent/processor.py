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
from dataclasses import dataclass
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
from core.signing import (
    Envelope,
    SignedEnvelope,
    peek_job_id,
    read_stream_fields,
    verify_envelope,
)
from statemachine.machine import (
    QUEUED,
    RETRY_WAIT,
    RUNNING,
    TERMINAL_STATES,
    VALIDATED,
    VERIFIED,
    Trigger,
)
from statemachine.snapshot import JobSnapshot
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


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivered stream entry: the job it names, its signed fields, how often it came."""

    job_id: str
    entry_id: str
    signed: SignedEnvelope
    deliveries: int


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
        job = JobSnapshot.of(snapshot)
        if job is None or job.job_id != job_id:
            job = await self._store.read(job_id)
        if job is None:
            await self._steps.dead_letter(entry_id, fields, Reason.UNKNOWN_JOB, f"no job {job_id}")
            return
        delivery = Delivery(job_id, entry_id, signed, deliveries)
        with structlog.contextvars.bound_contextvars(
            job_id=job_id, app_id=job.app_id, entry_id=entry_id
        ):
            state = job.state
            if state == QUEUED:
                await self._take_queued(delivery, job)
            elif job.entry_id == "" and state in TERMINAL_STATES:
                # The job ended before any agent took an entry for it (cancelled while
                # queued): its entry has nothing left to do.
                log.info("entry.job_already_ended", state=state)
                await self._steps.ack(entry_id)
            elif job.entry_id != entry_id:
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
                await self._resume(delivery, job)

    # --- layer 1 and the decision which step comes next --------------------------------------

    async def _take_queued(self, delivery: Delivery, job: JobSnapshot) -> None:
        if await self._refused_before_checks(delivery, job):
            return
        envelope = await self._verified(delivery, job, enforce_expiry=True)
        if envelope is None:
            return
        taken = await self._start_at_once(delivery, envelope, job)
        if taken is True:
            return
        if taken is None:
            # Another actor changed the job between our read and the atomic step: look
            # again, and take the step-by-step path if it is still ours to take.
            fresh = await self._store.read(delivery.job_id)
            if fresh is None or fresh.state != QUEUED or fresh.entry_id:
                if fresh is not None and fresh.state in TERMINAL_STATES:
                    await self._steps.ack(delivery.entry_id)
                return
            job = fresh
            if await self._cancelled(delivery, job):
                return
        entry_id = delivery.entry_id
        applied = await self._steps.transition(
            delivery.job_id,
            Trigger.VERIFY,
            QUEUED,
            entry_id=entry_id,
            detail={"entry_id": entry_id, "kid": delivery.signed.kid},
            effects=[SetJobFields({"entry_id": entry_id})],
            known=job.fields,
        )
        if applied is not None:
            await self._continue(delivery, envelope, JobSnapshot(applied))

    async def _refused_before_checks(self, delivery: Delivery, job: JobSnapshot) -> bool:
        """End the job before any layer runs when its entry is poison or it was cancelled."""
        return await self._ended_as_poison(delivery, job.state) or await self._cancelled(
            delivery, job
        )

    async def _cancelled(self, delivery: Delivery, job: JobSnapshot) -> bool:
        """Fail the job as `cancelled` if an operator asked for it; True if so."""
        if not job.cancel_requested:
            return False
        await self._finish(delivery.job_id, job.state, Fail(Reason.CANCELLED), delivery.entry_id)
        return True

    async def _verified(
        self, delivery: Delivery, job: JobSnapshot, *, enforce_expiry: bool
    ) -> Envelope | None:
        """Layer 1 on the delivered bytes; None when it failed the job with the reason."""
        signed = delivery.signed
        try:
            envelope = verify_envelope(
                signed.envelope_bytes,
                signed.sig,
                signed.kid,
                self._ring_source(),
                now=int(self._clock_s()),
                enforce_expiry=enforce_expiry,
            )
            if enforce_expiry:
                self._check_envelope_matches(envelope, job)
        except EnvelopeError as error:
            if enforce_expiry:
                log.warning(
                    "job.refused", layer="signature", reason=error.reason, problem=str(error)
                )
            await self._finish(
                delivery.job_id,
                job.state,
                Fail(error.reason),
                delivery.entry_id,
                detail={"problem": str(error)},
            )
            return None
        return envelope

    async def _start_at_once(
        self, delivery: Delivery, envelope: Envelope, job: JobSnapshot
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
        attempt = job.attempt + 1
        if attempt > 1:
            return False  # a rerun sweeps what an earlier run left: the step-by-step path
        try:
            checked = check_job(self._settings.common.installers_dir, envelope, self._ring_source())
        except JobRejected:
            return False
        manifest = checked.manifest
        job_id, entry_id = delivery.job_id, delivery.entry_id
        async with self._app_locks.hold_if_free(manifest.id) as held:
            if not held:
                return False
            steps = [
                Step(
                    Trigger.VERIFY,
                    {"entry_id": entry_id, "kid": delivery.signed.kid},
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
                    known=job.fields,
                )
                applied = await self._steps.through_outages(
                    lambda: self._store.apply(prepared), Trigger.START
                )
            except TransitionError as error:
                log.info("job.transition_lost", trigger=Trigger.START, problem=str(error))
                return None
            await self._run_started(job_id, entry_id, checked, attempt, applied.snapshot)
        return True

    async def _ended_as_poison(self, delivery: Delivery, state: str) -> bool:
        """Fail the job as `poison` when its entry was delivered too often; True if so."""
        if delivery.deliveries <= self._settings.max_deliveries:
            return False
        await self._finish(
            delivery.job_id,
            state,
            Fail(Reason.POISON),
            delivery.entry_id,
            detail={"problem": f"delivered {delivery.deliveries} times without an outcome"},
        )
        return True

    def _check_envelope_matches(self, envelope: Envelope, job: JobSnapshot) -> None:
        if envelope.app_id != job.app_id or envelope.target != job.target:
            raise MalformedEnvelope("envelope names another app or target than the job")
        if envelope.target != self._settings.target:
            raise MalformedEnvelope(f"envelope is for target {envelope.target!r}")

    async def _resume(self, delivery: Delivery, job: JobSnapshot) -> None:
        if await self._ended_as_poison(delivery, job.state):
            return
        # The job left `queued` under this very entry, so its age no longer matters.
        envelope = await self._verified(delivery, job, enforce_expiry=False)
        if envelope is not None:
            await self._continue(delivery, envelope, job)

    async def _continue(self, delivery: Delivery, envelope: Envelope, job: JobSnapshot) -> None:
        job_id, entry_id = delivery.job_id, delivery.entry_id
        state = job.state
        if state == RUNNING:
            await self._agent_lost(job_id, entry_id, envelope, job.attempt)
            return
        if await self._cancelled(delivery, job):
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
                job_id, Trigger.VALIDATE, VERIFIED, entry_id=entry_id, known=job.fields
            )
            if applied is None:
                return
            state = VALIDATED
        if state in (VALIDATED, RETRY_WAIT):
            await self._run(delivery, checked, state, job.attempt + 1)

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

    async def _run(self, delivery: Delivery, checked: CheckedJob, state: str, attempt: int) -> None:
        job_id, entry_id = delivery.job_id, delivery.entry_id
        manifest = checked.manifest
        # Two jobs of one app never run at once on this host: package managers lock.
        async with self._app_locks.hold(manifest.id):
            fresh = await self._store.read(job_id)
            if fresh is None or fresh.state != state or fresh.entry_id != entry_id:
                return  # moved on while we waited for the app (cancelled, most likely)
            if await self._cancelled(delivery, fresh):
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
                known=fresh.fields,
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
            self._metrics.decided(JobSnapshot(applied).app_id, decision)

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
