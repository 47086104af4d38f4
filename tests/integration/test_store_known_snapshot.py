"""Transitions on a snapshot the caller already holds (`known=`): same checks, one read less."""

from __future__ import annotations

import pytest

from core.errors import TransitionConflict
from statemachine.replay import replay_job, snapshot_drift
from statemachine.store import SetJobFields
from tests.agent_support import create_queued_job

pytestmark = pytest.mark.redis


async def test_a_chain_of_transitions_on_returned_snapshots_replays_to_the_stored_snapshot(
    store, ring
):
    snapshot = await create_queued_job(store, "job1")
    for trigger, extra in (("verify", {"entry_id": "1-0"}), ("validate", {}), ("start", {})):
        effects = [SetJobFields(extra)] if extra else []
        applied = await store.transition(
            "job1", trigger, actor="agent:a", known=snapshot, effects=effects
        )
        snapshot = applied.snapshot
    stored = await store.snapshot("job1")
    assert stored == snapshot
    assert stored is not None and (stored["state"], stored["entry_id"]) == ("running", "1-0")
    replayed = await replay_job(store, ring, "job1")
    assert replayed.intact, replayed.problems
    assert snapshot_drift(replayed, stored) == []


async def test_a_stale_known_snapshot_is_a_conflict_and_changes_nothing(store):
    stale = await create_queued_job(store, "job2")
    await store.transition("job2", "verify", actor="agent:a", known=stale)
    before = await store.snapshot("job2")
    events_before = len(await store.job_events("job2"))
    with pytest.raises(TransitionConflict):
        # Built on `queued` and its last hash, which the job has left.
        await store.transition("job2", "cancel", actor="panel:bob", known=stale)
    assert await store.snapshot("job2") == before
    assert len(await store.job_events("job2")) == events_before
