"""The history checker on hand-made histories: clean ones pass, every planted fault is named.

Pure: no Redis, no processes. The histories are built with the same `new_event` the store
writes with, so hashes, chains and macs are real and replay can judge them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from core.keyring import KeyRing
from statemachine.events import Event, new_event
from tests.agent_support import make_ring
from tests.chaos.checker import (
    AgentDeath,
    Run,
    Submission,
    check_history,
    parse_effect_log,
)

pytestmark = pytest.mark.chaos

T0 = 1_800_000_000_000


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return make_ring(tmp_path / "hmac.keys")


class History:
    """Builds one job's chained events step by step."""

    def __init__(self, ring: KeyRing, job_id: str) -> None:
        self.ring = ring
        self.job_id = job_id
        self.events: list[Event] = []
        self.state = ""
        self.at = T0

    def step(self, trigger: str, dst: str, *, actor: str, attempt: int, **detail) -> History:
        self.at += 1000
        event = new_event(
            self.ring,
            job_id=self.job_id,
            trigger=trigger,
            src=self.state,
            dst=dst,
            at=self.at,
            actor=actor,
            attempt=attempt,
            detail=detail,
            prev=self.events[-1].hash if self.events else "",
        )
        self.events.append(event)
        self.state = dst
        return self

    def accepted(self, agent: str = "agent:a") -> History:
        self.step("submit", "queued", actor="panel:chaos", attempt=0)
        self.step("verify", "verified", actor=agent, attempt=0)
        return self.step("validate", "validated", actor=agent, attempt=0)

    def succeeded_once(self, agent: str = "agent:a") -> History:
        self.accepted(agent)
        self.step("start", "running", actor=agent, attempt=1)
        return self.step("succeed", "succeeded", actor=agent, attempt=1)


def acknowledged(job_id: str) -> Submission:
    return Submission("app", "acknowledged", 201, job_id)


def clean_world(ring: KeyRing, jobs: int = 3) -> tuple[list[Submission], list[Event], list[Run]]:
    submissions, events, runs = [], [], []
    for n in range(jobs):
        job_id = f"job{n}"
        submissions.append(acknowledged(job_id))
        events += History(ring, job_id).succeeded_once().events
        runs.append(Run(job_id, 1, 100 + n))
    return submissions, events, runs


def test_a_clean_history_passes_every_rule(ring):
    submissions, events, runs = clean_world(ring)
    report = check_history(submissions, events, runs, ring)
    assert report.ok, report.as_dict()
    assert (report.acknowledged, report.jobs, report.runs) == (3, 3, 3)


def test_planted_a_deleted_terminal_event_is_a_lost_job(ring):
    submissions, events, runs = clean_world(ring)
    planted = [e for e in events if not (e.job_id == "job1" and e.trigger == "succeed")]
    report = check_history(submissions, planted, runs, ring)
    assert not report.ok
    assert report.lost == ["job1"]
    assert report.not_terminal == ["job1"]


def test_planted_a_duplicated_run_in_the_effect_log_is_an_extra_run(ring):
    submissions, events, runs = clean_world(ring)
    report = check_history(submissions, events, [*runs, Run("job2", 1, 999)], ring)
    assert not report.ok
    assert any(p.startswith("job2: attempt 1 ran 2x") for p in report.extra_runs), report
    assert not report.lost


def test_planted_an_acknowledged_job_never_created_is_reported(ring):
    submissions, events, runs = clean_world(ring)
    report = check_history([*submissions, acknowledged("ghost")], events, runs, ring)
    assert not report.ok
    assert report.never_created == ["ghost"]
    assert report.lost == ["ghost"]


def test_two_terminal_events_for_one_job_are_reported(ring):
    submissions, _events, runs = clean_world(ring, jobs=1)
    history = History(ring, "job0").succeeded_once()
    # A second outcome written past the first: replay calls it illegal, the count duplicated.
    history.step("fail", "failed", actor="agent:b", attempt=1, reason="agent_lost")
    report = check_history(submissions, history.events, runs, ring)
    assert report.multiple_terminal == ["job0"]
    assert report.illegal


def test_a_job_nobody_acknowledged_is_a_phantom_unless_an_answer_was_lost(ring):
    submissions, events, runs = clean_world(ring, jobs=1)
    stray = History(ring, "stray").succeeded_once().events
    runs = [*runs, Run("stray", 1, 5)]
    refused = Submission("app", "refused", 422)
    report = check_history([*submissions, refused], events + stray, runs, ring)
    assert report.phantom == ["stray"]
    unknown = Submission("app", "unknown", 503)
    assert check_history([*submissions, unknown], events + stray, runs, ring).ok


def test_a_run_without_a_start_event_is_an_extra_run(ring):
    submissions, events, runs = clean_world(ring, jobs=1)
    report = check_history(submissions, events, [*runs, Run("job0", 2, 7)], ring)
    assert report.extra_runs == [
        "job0: 2 runs but 1 starts",
        "job0: attempt 2 ran 1x, started 0x",
    ]


def agent_lost_then_success(ring: KeyRing) -> list[Event]:
    history = History(ring, "job0").accepted()
    history.step("start", "running", actor="agent:a", attempt=1)
    history.step("retry", "retry_wait", actor="agent:b", attempt=1, reason="agent_lost", delay_s=1)
    history.step("start", "running", actor="agent:b", attempt=2)
    return history.step("succeed", "succeeded", actor="agent:b", attempt=2).events


def test_a_second_run_after_the_agent_died_is_explained(ring):
    events = agent_lost_then_success(ring)
    runs = [Run("job0", 1, 10), Run("job0", 2, 11)]
    death = AgentDeath("a", T0 + 4500)  # after attempt 1 started, before the loss record
    report = check_history([acknowledged("job0")], events, runs, ring, deaths=[death])
    assert report.ok, report.as_dict()
    assert report.reruns_after_agent_death == 1


def test_a_second_run_without_an_agent_death_is_unexplained(ring):
    events = agent_lost_then_success(ring)
    runs = [Run("job0", 1, 10), Run("job0", 2, 11)]
    too_early = AgentDeath("a", T0)  # died before the attempt started: explains nothing
    report = check_history([acknowledged("job0")], events, runs, ring, deaths=[too_early])
    assert not report.ok
    assert report.unexplained_reruns == [
        "job0: attempt 1 ran and was recorded agent_lost but agent a did not die during it"
    ]


def test_an_agent_lost_attempt_that_never_ran_doubles_nothing(ring):
    events = agent_lost_then_success(ring)
    report = check_history([acknowledged("job0")], events, [Run("job0", 2, 11)], ring)
    assert report.ok, report.as_dict()
    assert report.lost_starts_without_run == 1


def test_a_tampered_event_is_illegal(ring):
    submissions, events, runs = clean_world(ring, jobs=1)
    forged = [replace(e, dst="failed") if e.trigger == "succeed" else e for e in events]
    report = check_history(submissions, forged, runs, ring)
    assert report.illegal


def test_entries_left_pending_fail_the_check(ring):
    submissions, events, runs = clean_world(ring)
    assert not check_history(submissions, events, runs, ring, pending=1).ok


def test_the_effect_log_parser_refuses_a_torn_line():
    assert parse_effect_log("j1 1 10\nj2 2 11\n") == [Run("j1", 1, 10), Run("j2", 2, 11)]
    with pytest.raises(ValueError, match="line 2"):
        parse_effect_log("j1 1 10\nj2 2")
