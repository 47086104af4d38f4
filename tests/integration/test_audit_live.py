"""Replay equals the live state, for thousands of jobs run by real agents through every path.

Two real `provision agent` processes run 2,000 jobs: successes spread over several apps, exit 1
failures, flaky installers that succeed on their second attempt, timeouts, jobs cancelled
while queued, running or waiting to retry, and long jobs during which one agent is SIGKILLed
(its runs are reclaimed and retried as `agent_lost`). Then the audit replays every job from
its events alone: the replayed state of each job must equal its live snapshot, every chain,
MAC and transition must hold, and the two event streams must agree, in one process and split
over several, and through the real `provision audit verify`.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from panel.jobs.service import CannotCancel, JobService
from statemachine.audit.auditor import JobAudit, audit_all
from statemachine.store import EventStore
from tests.agent_support import submit, wait_until, write_app
from tests.integration.test_audit_cli import audit

pytestmark = [pytest.mark.redis, pytest.mark.slow]

FAST_APPS = [f"ok{number}" for number in range(8)]
PLAN = {"ok": 1700, "fail": 100, "flaky": 80, "timeout": 20, "long": 12, "cancel": 88}
TERMINAL = {"succeeded", "failed"}


def _apps(folder: Path) -> None:
    for app_id in FAST_APPS:
        write_app(folder, app_id, "echo done")
    write_app(folder, "fail", 'echo "bad input" >&2\nexit 1')
    write_app(
        folder,
        "flaky",
        '[ "$PROV_ATTEMPT" -ge 2 ] || exit 2\necho ok',
        retry={"max_retries": 2, "base_delay": 0.2, "factor": 1},
    )
    write_app(folder, "timeout", "sleep 30", timeout=1)
    # Long enough to kill an agent under them; idempotent (the default), so reclaimed runs retry.
    for number in range(4):
        write_app(
            folder,
            f"long{number}",
            "sleep 2\necho finished",
            retry={"max_retries": 3, "base_delay": 0.2, "factor": 1},
        )
    write_app(folder, "waiting", "sleep 20", timeout=60)


@pytest.mark.timeout(420)
async def test_replay_equals_live_state_for_thousands_of_real_jobs(
    tmp_path, redis_url, namespace, installers, ring, store: EventStore, spawn, redis_client
):
    _apps(installers)
    agents = [spawn(name, PROV_AGENT_CONCURRENCY="4", PROV_LEASE_S="2") for name in ("a1", "a2")]
    service = JobService(redis_client, store, lambda: ring, ttl_s=3600)
    job_ids: list[str] = []
    # First the long jobs, and one agent killed while it runs some of them.
    long_ids = [
        (await submit(store, ring, installers, f"long{number % 4}")).job_id
        for number in range(PLAN["long"])
    ]
    job_ids.extend(long_ids)

    async def running_on_a1() -> bool:
        for job_id in long_ids:
            events = await store.job_events(job_id)
            if events and events[-1].dst == "running" and events[-1].actor == "agent:a1":
                return True
        return False

    await wait_until(running_on_a1, timeout_s=60, message="a long job running on agent a1")
    agents[0].signal(signal.SIGKILL)
    agents[0].wait(10)
    agents[0] = spawn("a1-again", PROV_AGENT_CONCURRENCY="4", PROV_LEASE_S="2")

    rng = random.Random(7)
    kinds = [kind for kind, count in PLAN.items() if kind != "long" for _ in range(count)]
    rng.shuffle(kinds)
    to_cancel: list[str] = []
    for number, kind in enumerate(kinds):
        if kind == "ok":
            app_id = FAST_APPS[number % len(FAST_APPS)]
        elif kind == "cancel":
            app_id = "waiting"
        else:
            app_id = kind
        job = await submit(store, ring, installers, app_id)
        job_ids.append(job.job_id)
        if kind == "cancel":
            to_cancel.append(job.job_id)
    # Cancel as they are: some still queued, some running (the agent kills them).
    for job_id in to_cancel:
        with contextlib.suppress(CannotCancel):
            await service.cancel(job_id, user="tester")

    async def all_terminal() -> bool:
        pipe = redis_client.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(store.keys.job(job_id), "state")
        states = await pipe.execute()
        return all(state in (b"succeeded", b"failed") for state in states)

    await wait_until(all_terminal, timeout_s=300, interval_s=1.0, message="every job terminal")

    audits: list[JobAudit] = []
    summary = await audit_all(store, ring, check_streams=True, on_job=audits.append)
    assert summary.failing == [], summary.failing[:3]
    assert summary.jobs == len(job_ids)
    reasons: Counter[str] = Counter()
    retried = 0
    for audit_result in audits:
        live = await store.snapshot(audit_result.job_id)
        assert live is not None
        # The replayed record is the live one, field for field (bookkeeping aside).
        assert audit_result.replayed.state == live["state"]
        assert audit_result.replayed.snapshot["attempt"] == live["attempt"]
        assert audit_result.replayed.snapshot["last_hash"] == live["last_hash"]
        reasons[live.get("reason") or live["state"]] += 1
        retried += int(live["attempt"]) > 1
    # Every path really happened.
    assert reasons["succeeded"] >= PLAN["ok"]
    assert reasons["validation_error"] == PLAN["fail"]
    assert reasons["timeout"] == PLAN["timeout"]
    assert reasons["cancelled"] == PLAN["cancel"]
    assert retried >= PLAN["flaky"]
    lost = [
        event
        for event in await store.client.xrange(store.keys.events)
        if event[1][b"trigger"] == b"retry" and b"agent_lost" in event[1][b"detail"]
    ]
    assert lost, "the killed agent's runs were reclaimed as agent_lost"

    # The real auditor's command agrees, in one process and split over three.
    for workers in ("1", "3"):
        code, out, err = await audit(
            tmp_path, redis_url, namespace, "verify", "--json", "--workers", workers
        )
        verdict = json.loads(out)
        assert code == 0 and verdict["ok"], err + out[:2000]
        assert verdict["jobs"] == len(job_ids)
