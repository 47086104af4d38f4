"""The typed view of a job's snapshot hash: absent and hostile fields read as absent."""

from __future__ import annotations

from statemachine.snapshot import JobSnapshot


def test_a_missing_job_has_no_snapshot():
    assert JobSnapshot.of(None) is None
    assert JobSnapshot.of({}) is None


def test_fields_read_typed():
    job = JobSnapshot(
        {
            "job_id": "01J",
            "state": "failed",
            "app_id": "nginx",
            "target": "web-1",
            "requested_by": "alice",
            "entry_id": "1-0",
            "cancel_requested": "1",
            "attempt": "3",
            "reason": "timeout",
            "exit_code": "2",
            "created_at": "1000",
            "updated_at": "2000",
            "next_retry_at": "",
        }
    )
    assert (job.job_id, job.state, job.app_id, job.target) == ("01J", "failed", "nginx", "web-1")
    assert (job.requested_by, job.entry_id, job.cancel_requested) == ("alice", "1-0", True)
    assert (job.attempt, job.reason, job.exit_code) == (3, "timeout", 2)
    assert (job.created_at, job.updated_at, job.next_retry_at) == (1000, 2000, None)


def test_a_reason_only_counts_on_a_failed_job():
    assert JobSnapshot({"state": "succeeded", "reason": "stale"}).reason is None
    assert JobSnapshot({"state": "failed", "reason": ""}).reason is None


def test_edited_or_absent_numbers_read_as_absent_rather_than_crashing():
    job = JobSnapshot(
        {"attempt": "x", "exit_code": "1e9", "created_at": "٣", "updated_at": "9" * 30}
    )
    assert (job.attempt, job.exit_code, job.created_at, job.updated_at) == (0, None, None, None)
    assert not JobSnapshot({"cancel_requested": "yes"}).cancel_requested
    assert JobSnapshot({"exit_code": "-1"}).exit_code == -1
