"""The history checker: did every acknowledged job end exactly once, and run only as it should?

A pure function over what a chaos run leaves behind, in the spirit of Jepsen's total-queue
check: what the panel told the submitter (the submit log), what the system recorded (every
entry of `prov:events`), what actually executed (the installers' own effect log, one line per
run), when the harness killed or stopped an agent, and what was still pending afterwards.

Rules (each a field of `Report`):

    lost                 acknowledged (2xx) but no terminal event after the drain
    never_created        acknowledged but no `submit` event: the panel reported a job it did
                         not store
    multiple_terminal    more than one event reaching `succeeded`/`failed`
    phantom              jobs in the events that no acknowledgement names, beyond the number
                         of submissions whose answer was unknown (5xx, cut connection,
                         timeout); a refused (4xx) submission must never create a job
    extra_runs           runs in the effect log that no `start` event accounts for: more runs
                         of a job than starts, a run of an attempt never started, or two runs
                         of one attempt
    unexplained_reruns   an `agent_lost` record for an attempt that ran (it is in the effect
                         log) although its agent did not die (per the harness's death log)
                         between the attempt's `start` and the record: a second run caused by
                         something other than an agent death, such as a lapsed lease.
                         (An `agent_lost` for an attempt that never ran, e.g. a `start` whose
                         answer was lost in a Redis outage, doubles nothing; it is counted in
                         `lost_starts_without_run`, not judged.)
    illegal              replay problems (illegal transition, broken chain, bad mac, src/dst)
    not_terminal         jobs whose last event leaves them in a non-terminal state
    pending              entries still pending in the agents' group after the drain
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from core.keyring import KeyRing
from core.reasons import Reason
from statemachine.events import Event
from statemachine.machine import TERMINAL_STATES
from statemachine.replay import replay_events

Outcome = Literal["acknowledged", "refused", "unknown"]


@dataclass(frozen=True, slots=True)
class Submission:
    """One POST /api/install and what the panel answered (status None: no answer at all)."""

    app_id: str
    outcome: Outcome
    status: int | None
    job_id: str | None = None
    at_ms: int = 0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Run:
    """One line of the effect log: an installer run of `job_id`, attempt `attempt`."""

    job_id: str
    attempt: int
    pid: int


@dataclass(frozen=True, slots=True)
class AgentDeath:
    """The harness killed (or stopped) agent `agent_id` at `at_ms` (epoch milliseconds)."""

    agent_id: str
    at_ms: int


@dataclass(slots=True)
class Report:
    """Everything the checker found; `ok` when no rule was broken."""

    acknowledged: int = 0
    refused: int = 0
    unknown: int = 0
    jobs: int = 0
    runs: int = 0
    reruns_after_agent_death: int = 0
    lost_starts_without_run: int = 0
    lost: list[str] = field(default_factory=list)
    never_created: list[str] = field(default_factory=list)
    multiple_terminal: list[str] = field(default_factory=list)
    phantom: list[str] = field(default_factory=list)
    extra_runs: list[str] = field(default_factory=list)
    unexplained_reruns: list[str] = field(default_factory=list)
    illegal: list[str] = field(default_factory=list)
    not_terminal: list[str] = field(default_factory=list)
    pending: int = 0

    @property
    def ok(self) -> bool:
        """True when every rule held."""
        return not (
            self.lost
            or self.never_created
            or self.multiple_terminal
            or self.phantom
            or self.extra_runs
            or self.unexplained_reruns
            or self.illegal
            or self.not_terminal
            or self.pending
        )

    def as_dict(self) -> dict[str, object]:
        """The report as JSON-ready data."""
        return {**asdict(self), "ok": self.ok}


def parse_effect_log(text: str) -> list[Run]:
    """Lines `job_id attempt pid`; a torn or foreign line is an error, not skipped."""
    runs = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
            raise ValueError(f"effect log line {number} is malformed: {line!r}")
        runs.append(Run(parts[0], int(parts[1]), int(parts[2])))
    return runs


def read_submit_log(path: Path) -> list[Submission]:
    """The JSON-lines submit log the harness writes."""
    return [Submission(**json.loads(line)) for line in path.read_text().splitlines() if line]


def check_history(
    submissions: Sequence[Submission],
    events: Iterable[Event],
    runs: Sequence[Run],
    ring: KeyRing,
    *,
    deaths: Sequence[AgentDeath] = (),
    pending: int = 0,
) -> Report:
    """Judge one run's history against every rule of the module docstring."""
    by_job: dict[str, list[Event]] = defaultdict(list)
    for event in events:
        by_job[event.job_id].append(event)
    report = Report(pending=pending, jobs=len(by_job), runs=len(runs))
    outcomes = Counter(s.outcome for s in submissions)
    report.acknowledged = outcomes["acknowledged"]
    report.refused = outcomes["refused"]
    report.unknown = outcomes["unknown"]

    acknowledged = {s.job_id for s in submissions if s.outcome == "acknowledged" and s.job_id}
    for job_id in sorted(acknowledged):
        history = by_job.get(job_id, [])
        if not any(e.trigger == "submit" for e in history):
            report.never_created.append(job_id)
        if not any(e.dst in TERMINAL_STATES for e in history):
            report.lost.append(job_id)
    unacknowledged = sorted(set(by_job) - acknowledged)
    if len(unacknowledged) > report.unknown:
        report.phantom = unacknowledged

    runs_by_job: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        runs_by_job[run.job_id].append(run)
    for job_id in sorted(set(by_job) | set(runs_by_job)):
        history = by_job.get(job_id, [])
        if sum(e.dst in TERMINAL_STATES for e in history) > 1:
            report.multiple_terminal.append(job_id)
        if history:
            replayed = replay_events(job_id, history, ring)
            report.illegal.extend(f"{job_id}: {p}" for p in replayed.problems)
            if replayed.state not in TERMINAL_STATES:
                report.not_terminal.append(job_id)
        report.extra_runs.extend(_extra_runs(job_id, history, runs_by_job.get(job_id, [])))
        ran = {run.attempt for run in runs_by_job.get(job_id, [])}
        explained, never_ran, unexplained = _reruns(job_id, history, deaths, ran)
        report.reruns_after_agent_death += explained
        report.lost_starts_without_run += never_ran
        report.unexplained_reruns.extend(unexplained)
    return report


def _extra_runs(job_id: str, history: Sequence[Event], runs: Sequence[Run]) -> list[str]:
    starts = Counter(e.attempt for e in history if e.trigger == "start")
    ran = Counter(run.attempt for run in runs)
    problems = []
    if sum(ran.values()) > sum(starts.values()):
        problems.append(f"{job_id}: {sum(ran.values())} runs but {sum(starts.values())} starts")
    for attempt, count in sorted(ran.items()):
        if count > starts.get(attempt, 0):
            problems.append(
                f"{job_id}: attempt {attempt} ran {count}x, started {starts.get(attempt, 0)}x"
            )
    return problems


def _reruns(
    job_id: str, history: Sequence[Event], deaths: Sequence[AgentDeath], ran: set[int]
) -> tuple[int, int, list[str]]:
    """Sort `agent_lost` records: explained by a death of the attempt's agent, for an
    attempt that never ran, and the rest (the violations)."""
    started: dict[int, Event] = {e.attempt: e for e in history if e.trigger == "start"}
    died: Mapping[str, list[int]] = _deaths_by_agent(deaths)
    explained = never_ran = 0
    unexplained = []
    for event in history:
        if event.detail.get("reason") != Reason.AGENT_LOST:
            continue
        start = started.get(event.attempt)
        agent = start.actor.removeprefix("agent:") if start is not None else ""
        if start is not None and any(start.at <= t <= event.at for t in died.get(agent, [])):
            explained += 1
        elif event.attempt not in ran:
            never_ran += 1
        else:
            unexplained.append(
                f"{job_id}: attempt {event.attempt} ran and was recorded agent_lost "
                f"but agent {agent or '?'} did not die during it"
            )
    return explained, never_ran, unexplained


def _deaths_by_agent(deaths: Sequence[AgentDeath]) -> dict[str, list[int]]:
    result: dict[str, list[int]] = defaultdict(list)
    for death in deaths:
        result[death.agent_id].append(death.at_ms)
    return result
