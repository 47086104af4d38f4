"""The panel's view of jobs: submit, read, list, cancel, over the event store and Redis.

Handlers stay thin: they parse, call one method here, and answer. Every read turns Redis
strings into the API's shapes (docs/architecture.md §8): times in epoch milliseconds, absent values
`None`.
Hostile ids never reach a key name: a job id must be a ULID, which the store would never
have created otherwise.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

import redis.asyncio as aioredis
from ulid import ULID

from core.errors import (
    CannotSubmit,
    FormError,
    LimitReached,
    ProvisionError,
    TamperError,
    TransitionError,
)
from core.keyring import KeyRing
from core.keys import is_valid_target
from core.reasons import Reason
from core.runtime.catalogue import AppEntry
from core.signing import JOB_ID_PATTERN
from core.text import as_text_lenient
from core.validation import validate_inputs
from panel.jobs.producer import SubmittedJob, submit_job
from panel.jobs.submission_limits import SubmissionLimits, refusal, submission_guards
from statemachine.audit.archive_record import (
    load_archive_records,
    pointer_archive_id,
    pointer_problem,
)
from statemachine.audit.auditor import ARCHIVED_TO
from statemachine.events import Event, event_from_fields, parse_event
from statemachine.machine import (
    QUEUED,
    RETRY_WAIT,
    STATES,
    TERMINAL_STATES,
    VALIDATED,
    VERIFIED,
    Trigger,
)
from statemachine.replay import JobReplayer, ReplayedJob, snapshot_drift
from statemachine.snapshot import JobSnapshot
from statemachine.store import EventStore, Unschedule

MAX_PAGE: Final = 200
# A filtered listing reads at most this many index entries per page, so a filter that
# matches nothing can never make one request walk the whole history.
MAX_SCAN_PER_PAGE: Final = 2000
LOG_PAGE: Final = 5000

CANCELLABLE_BY_PANEL: Final = frozenset({QUEUED, VERIFIED, VALIDATED, RETRY_WAIT})


def is_job_id(job_id: str) -> bool:
    """Whether `job_id` can name a job (a ULID)."""
    return bool(JOB_ID_PATTERN.fullmatch(job_id))


def job_view(snapshot: Mapping[str, str]) -> dict[str, Any]:
    """A snapshot in the API's shape (docs/architecture.md §8)."""
    job = JobSnapshot(snapshot)
    return {
        "job_id": job.job_id,
        "app_id": job.app_id,
        "target": job.target,
        "state": job.state,
        "reason": job.reason,
        "attempt": job.attempt,
        "exit_code": job.exit_code,
        "requested_by": job.requested_by,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "next_retry_at": job.next_retry_at,
        "cancel_requested": job.cancel_requested,
    }


@dataclass(frozen=True, slots=True)
class JobFilters:
    """What a job listing is narrowed to; empty means any."""

    app_id: str = ""
    state: str = ""
    target: str = ""
    user: str = ""
    since_ms: int | None = None
    until_ms: int | None = None

    def matches(self, view: Mapping[str, Any]) -> bool:
        """Whether a job view passes every filter."""
        return (
            (not self.app_id or view["app_id"] == self.app_id)
            and (not self.state or view["state"] == self.state)
            and (not self.target or view["target"] == self.target)
            and (not self.user or view["requested_by"] == self.user)
        )


@dataclass(slots=True)
class JobPage:
    """One page of a listing, newest first, and the cursor of the next page."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None


@dataclass(frozen=True, slots=True)
class LogLine:
    """One stored output line."""

    id: str
    stream: str
    line: str
    attempt: int

    def as_dict(self) -> dict[str, Any]:
        """The API's shape of a log line."""
        return {"id": self.id, "stream": self.stream, "line": self.line, "attempt": self.attempt}


def log_line_from_fields(entry_id: str, fields: Mapping[bytes | str, bytes | str]) -> LogLine:
    """Parse a log stream entry (tolerant: a log line is shown, never trusted)."""
    values = {as_text_lenient(k): as_text_lenient(v) for k, v in fields.items()}
    attempt = values.get("attempt", "0")
    return LogLine(
        id=entry_id,
        stream=values.get("stream", "stdout"),
        line=values.get("line", ""),
        attempt=int(attempt) if attempt.isascii() and attempt.isdigit() else 0,
    )


class CannotCancel(ProvisionError):
    """The job already ended (its final state is carried)."""

    def __init__(self, state: str) -> None:
        self.state = state
        super().__init__(f"job already {state}")


@dataclass(frozen=True, slots=True)
class JobVerification:
    """What checking one job's record found: `problems` are (event id, what is wrong)."""

    events: int
    problems: list[tuple[str, str]]
    archived_to: str = ""

    @property
    def verified(self) -> bool:
        """True when there are events and every check held."""
        return bool(self.events) and not self.problems

    def problem_events(self) -> set[str]:
        """The ids of the events a problem names."""
        return {event_id for event_id, _problem in self.problems if event_id}


class JobService:
    """Jobs as the panel reads and changes them."""

    def __init__(
        self,
        client: aioredis.Redis,
        store: EventStore,
        ring: Callable[[], KeyRing],
        *,
        ttl_s: int,
        limits: SubmissionLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._store = store
        self._keys = store.keys
        self._ring_source = ring
        self._ttl_s = ttl_s
        self._limits = limits
        self._clock = clock

    @property
    def store(self) -> EventStore:
        """The event store behind this service."""
        return self._store

    async def submit(
        self, app: AppEntry, submitted: Mapping[str, object], *, user: str, target: str
    ) -> SubmittedJob:
        """Validate with the shared core function, then sign, seal and store the job.

        Raises FormError with a message for every bad field (the target included), and
        SubmissionRefused when the user reached a submission limit (nothing is stored).
        """
        if app.manifest is None or not app.valid:
            raise CannotSubmit(f"app {app.app_id!r} is invalid")
        errors: dict[str, str] = {}
        try:
            values = validate_inputs(app.manifest, submitted)
        except FormError as error:
            errors.update(error.errors)
            values = {}
        if not is_valid_target(target):
            errors["target"] = "must be a host name of lower-case letters, digits, '.', '_', '-'"
        if errors:
            raise FormError(errors)
        ring = self._ring_source()
        now_s = int(self._clock())
        job_id = str(ULID())
        guards = (
            submission_guards(self._keys, self._limits, user=user, job_id=job_id, now_s=now_s)
            if self._limits is not None
            else []
        )
        try:
            return await submit_job(
                self._store,
                ring,
                app,
                values,
                requested_by=user,
                target=target,
                ttl_s=self._ttl_s,
                job_id=job_id,
                guards=guards,
            )
        except LimitReached as reached:
            assert self._limits is not None  # only guards raise it
            raise refusal(reached.limit, self._limits, now_s=now_s) from None

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's API view, or None."""
        if not is_job_id(job_id):
            return None
        snapshot = await self._store.snapshot(job_id)
        return job_view(snapshot) if snapshot else None

    async def events(self, job_id: str) -> list[Event]:
        """Every event of the job that parses, in order (`verified_timeline` names any other)."""
        if not is_job_id(job_id):
            return []
        events: list[Event] = []
        async for stream_id, fields in self._store.iter_stream_entries(
            self._keys.job_events(job_id)
        ):
            try:
                events.append(event_from_fields(fields, stream_id=stream_id))
            except TamperError:
                continue
        return events

    async def verified_timeline(self, job_id: str) -> tuple[list[Event], JobVerification]:
        """The job's events that parse, and its record checked as `provision audit verify
        --job` checks its own stream, from one read of that stream.

        Every event's hash, `prev` link and MAC under the key ring, every transition
        through the machine, and the stored snapshot against the one the events produce.
        (Agreement with the global stream needs a pass over all of it: the CLI does that.)
        """
        events: list[Event] = []
        replayer = JobReplayer(job_id, self._ring_source())
        async for stream_id, fields in self._store.iter_stream_entries(
            self._keys.job_events(job_id)
        ):
            try:
                event, detail_text = parse_event(fields, stream_id=stream_id)
            except TamperError as error:
                replayer.malformed(error)
                continue
            events.append(event)
            replayer.add(event, detail_text=detail_text)
        return events, await self._verification(job_id, replayer.finish())

    async def _verification(self, job_id: str, replayed: ReplayedJob) -> JobVerification:
        snapshot = await self._store.snapshot(job_id)
        pointer = (snapshot or {}).get(ARCHIVED_TO, "")
        if pointer and not replayed.event_count:
            # The events left with an archive: the pointer must be one the archive made for
            # this job (the CLI checks the archive file itself).
            ring = self._ring_source()
            archives = await load_archive_records(self._client, self._keys, ring)
            problem = pointer_problem(
                ring,
                pointer,
                job_id=job_id,
                last_hash=(snapshot or {}).get("last_hash", ""),
                archives=archives,
            )
            return JobVerification(
                events=0,
                problems=[("", problem)] if problem else [],
                archived_to=pointer_archive_id(pointer),
            )
        archived_to = pointer_archive_id(pointer) if pointer else ""
        problems = [*replayed.problems, *snapshot_drift(replayed, snapshot)]
        return JobVerification(
            events=replayed.event_count,
            problems=[(problem.event_id, problem.problem) for problem in problems],
            archived_to=archived_to,
        )

    async def submitted_inputs(self, job_id: str) -> dict[str, Any]:
        """The (non-secret) inputs a job was submitted with, for "run again"."""
        entries = cast(
            list[tuple[bytes, dict[bytes | str, bytes | str]]],
            await self._client.xrange(self._keys.job_events(job_id), count=1),
        )
        if not entries:
            return {}
        event = event_from_fields(entries[0][1])
        inputs = event.detail.get("inputs", {})
        return dict(inputs) if isinstance(inputs, dict) else {}

    async def log(self, job_id: str, *, after: str = "", limit: int = LOG_PAGE) -> list[LogLine]:
        """Log lines after the stream id `after` (from the start when empty)."""
        if not is_job_id(job_id):
            return []
        start = f"({after}" if after else "-"
        entries = cast(
            list[tuple[bytes, dict[bytes | str, bytes | str]]],
            await self._client.xrange(self._keys.job_log(job_id), min=start, count=limit),
        )
        return [
            log_line_from_fields(as_text_lenient(entry_id), fields) for entry_id, fields in entries
        ]

    async def listing(
        self, filters: JobFilters, *, cursor: str | None = None, limit: int = 50
    ) -> JobPage:
        """Jobs newest first; `cursor` continues a previous page."""
        limit = max(1, min(limit, MAX_PAGE))
        max_score: str = "+inf" if filters.until_ms is None else str(filters.until_ms)
        min_score: str = "-inf" if filters.since_ms is None else str(filters.since_ms)
        after_member = ""
        if cursor:
            score_text, _, after_member = cursor.partition(":")
            if score_text.isascii() and score_text.isdigit() and is_job_id(after_member):
                max_score = score_text
            else:
                after_member = ""
        page = JobPage()
        scanned = 0
        offset = 0
        while len(page.jobs) < limit and scanned < MAX_SCAN_PER_PAGE:
            batch = cast(
                list[tuple[bytes, float]],
                await self._client.zrevrangebyscore(
                    self._keys.jobs_index,
                    max_score,
                    min_score,
                    start=offset,
                    num=limit * 2,
                    withscores=True,
                ),
            )
            if not batch:
                break
            offset += len(batch)
            members = [(as_text_lenient(member), int(score)) for member, score in batch]
            if after_member:
                # Skip up to and including the cursor's job (same-score jobs sort by member).
                members = _after(members, after_member)
                after_member = ""
            async with self._client.pipeline(transaction=False) as pipe:
                for job_id, _score in members:
                    pipe.hgetall(self._keys.job(job_id))
                snapshots = await pipe.execute()
            for (job_id, score), raw in zip(members, snapshots, strict=True):
                scanned += 1
                if not raw:
                    continue
                view = job_view({as_text_lenient(k): as_text_lenient(v) for k, v in raw.items()})
                if filters.matches(view):
                    page.jobs.append(view)
                    if len(page.jobs) == limit:
                        page.next_cursor = f"{score}:{job_id}"
                        break
        return page

    async def cancel(self, job_id: str, *, user: str) -> str | None:
        """Ask for cancellation; a job not running yet is failed here and now.

        Returns the state at that moment, None for an unknown job; raises CannotCancel for
        a job that already ended. A running job is killed by its agent within a second.
        """
        if not is_job_id(job_id):
            return None
        state = await self._store.request_cancel(job_id)
        if state == "":
            return None
        if state in TERMINAL_STATES:
            raise CannotCancel(state)
        if state in CANCELLABLE_BY_PANEL:
            effects = [Unschedule(self._keys.retry, job_id)] if state == RETRY_WAIT else []
            try:
                applied = await self._store.transition(
                    job_id,
                    Trigger.CANCEL,
                    actor=f"panel:{user}",
                    expect_state=state,
                    detail={"reason": Reason.CANCELLED, "by": user},
                    effects=effects,
                )
            except TransitionError:
                # An agent moved it first; the flag is set, and the agent honours it.
                now = await self._store.read(job_id)
                return now.state or state if now else state
            return applied.event.dst
        return state

    async def agents(self) -> list[dict[str, Any]]:
        """Every agent's last heartbeat, newest first."""
        raw = cast(dict[bytes, bytes], await self._client.hgetall(self._keys.agents))
        beats: list[dict[str, Any]] = []
        for agent_id, value in raw.items():
            try:
                beat = json.loads(value)
            except ValueError:
                continue
            if isinstance(beat, dict):
                beat.setdefault("agent_id", as_text_lenient(agent_id))
                beats.append(beat)
        return sorted(beats, key=lambda beat: -int(beat.get("last_seen", 0) or 0))

    async def count_by_state(self, *, sample: int = 10_000) -> dict[str, int]:
        """How many of the most recent `sample` jobs are in each state (for /metrics)."""
        ids = cast(list[bytes], await self._client.zrevrange(self._keys.jobs_index, 0, sample - 1))
        counts: dict[str, int] = {state.value: 0 for state in STATES}
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(self._keys.job(as_text_lenient(job_id)), "state")
            states = await pipe.execute()
        for state in states:
            if state is not None and as_text_lenient(state) in counts:
                counts[as_text_lenient(state)] += 1
        return counts


def _after(members: Sequence[tuple[str, int]], cursor_member: str) -> list[tuple[str, int]]:
    for index, (member, _score) in enumerate(members):
        if member == cursor_member:
            return list(members[index + 1 :])
    return list(members)
