"""Transitions on a snapshot the caller already holds (`known=`): same checks, one read less."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from core.errors import TransitionConflict
from statemachine.replay import replay_job, snapshot_drift
from statemachine.store import EventStore, IndexJob, SetJobFields
from tests.keyring_fixtures import ring_of

pytestmark = pytest.mark.redis

RING = ring_of("k1")


@pytest.fixture
def store(redis_client: aioredis.Redis, redis_keys) -> EventStore:
    return EventStore(redis_client, redis_keys, RING)


async def _queued(store: EventStore, job_id: str) -> dict[str, str]:
    applied = await store.create_job(
        job_id,
        actor="panel:alice",
        detail={"app_id": "hello-web", "target": "local", "requested_by": "alice"},
        effects=[IndexJob(store.keys.jobs_index, 1000, job_id)],
    )
    return applied.snapshot


async def test_a_chain_of_transitions_on_returned_snapshots_replays_to_the_stored_snapshot(store):
    snapshot = await _queued(store, "job1")
    for trigger, extra in (("verify", {"entry_id": "1-0"}), ("validate", {}), ("start", {})):
        effects = [SetJobFields(extra)] if extra else []
        applied = await store.transition(
            "job1", trigger, actor="agent:a", known=snapshot, effects=effects
        )
        snapshot = applied.snapshot
    stored = await store.snapshot("job1")
    assert stored == snapshot
    assert stored is not None and (stored["state"], stored["entry_id"]) == ("running", "1-0")
    replayed = await replay_job(store, RING, "job1")
    assert replayed.intact, replayed.problems
    assert snapshot_drift(replayed, stored) == []


async def test_a_stale_known_snapshot_is_a_conflict_and_changes_nothing(store):
    stale = await _queued(store, "job2")
    await store.transition("job2", "verify", actor="agent:a", known=stale)
    before = await store.snapshot("job2")
    events_before = len(await store.job_events("job2"))
    with pytest.raises(TransitionConflict):
        # Built on `queued` and its last hash, which the job has left.
        await store.transition("job2", "cancel", actor="panel:bob", known=stale)
    assert await store.snapshot("job2") == before
    assert len(await store.job_events("job2")) == events_before
