"""Several triggers recorded as one atomic step (`EventStore.chain`): the same events and
snapshot as one step at a time, all or nothing."""

from __future__ import annotations

import itertools

import pytest

from core.errors import IllegalTransition, TransitionConflict
from statemachine.replay import replay_job, snapshot_drift
from statemachine.store import AppendEntry, SetJobFields, Step
from tests.agent_support import create_queued_job

pytestmark = pytest.mark.redis

TAKE = [
    Step("verify", {"entry_id": "1-0", "kid": "k1"}, effects=[SetJobFields({"entry_id": "1-0"})]),
    Step("validate"),
    Step("start", {"entry_id": "1-0", "script": "install.sh"}, attempt=1),
]


async def test_a_chain_writes_one_chained_event_per_step_and_replays_to_its_snapshot(
    store, ring, redis_client
):
    snapshot = await create_queued_job(store, "job1")
    global_before = await redis_client.xlen(store.keys.events)
    applied = await store.chain(
        "job1", TAKE, actor="agent:a", expect_state="queued", known=snapshot
    )
    events = await store.job_events("job1")
    assert [(e.trigger, e.src, e.dst) for e in events] == [
        ("submit", "", "queued"),
        ("verify", "queued", "verified"),
        ("validate", "verified", "validated"),
        ("start", "validated", "running"),
    ]
    assert [e.attempt for e in events] == [0, 0, 0, 1]
    for before, after in itertools.pairwise(events):
        assert after.prev == before.hash
    assert await redis_client.xlen(store.keys.events) == global_before + 3
    stored = await store.snapshot("job1")
    assert stored == applied.snapshot
    assert stored is not None
    assert (stored["state"], stored["entry_id"], stored["attempt"]) == ("running", "1-0", "1")
    assert stored["event_count"] == "4" and stored["last_hash"] == events[-1].hash
    replayed = await replay_job(store, ring, "job1")
    assert replayed.intact, replayed.problems
    assert snapshot_drift(replayed, stored) == []


async def test_a_chain_leaves_what_the_same_steps_one_at_a_time_leave(store):
    queued = await create_queued_job(store, "job1")
    await store.chain("job1", TAKE, actor="agent:a", expect_state="queued", known=queued)
    snapshot = await create_queued_job(store, "job2")
    for step in TAKE:
        applied = await store.transition(
            "job2",
            step.trigger,
            actor="agent:a",
            detail=step.detail,
            attempt=step.attempt,
            effects=step.effects,
            known=snapshot,
        )
        snapshot = applied.snapshot
    chained, stepped = await store.job_events("job1"), await store.job_events("job2")
    assert [(e.trigger, e.src, e.dst, e.attempt, e.detail, e.actor) for e in chained] == [
        (e.trigger, e.src, e.dst, e.attempt, e.detail, e.actor) for e in stepped
    ]
    one, two = await store.snapshot("job1"), await store.snapshot("job2")
    assert one is not None and two is not None
    volatile = {"job_id", "last_event_id", "last_hash", "updated_at", "created_at"}
    assert {k: v for k, v in one.items() if k not in volatile} == {
        k: v for k, v in two.items() if k not in volatile
    }


@pytest.mark.parametrize(
    "interference",
    ["cancel requested", "another agent verified it", "another step recorded"],
)
async def test_a_chain_that_lost_a_race_writes_nothing(store, redis_client, interference):
    snapshot = await create_queued_job(store, "job1")
    if interference == "cancel requested":
        await store.request_cancel("job1")
    elif interference == "another agent verified it":
        await redis_client.hset(store.keys.job("job1"), "entry_id", "9-0")
    else:
        await store.transition("job1", "verify", actor="agent:b", known=snapshot)
    before = await store.snapshot("job1")
    events_before = await redis_client.xlen(store.keys.events)
    with pytest.raises(TransitionConflict):
        await store.chain(
            "job1",
            TAKE,
            actor="agent:a",
            expect_state="queued",
            expect_fields={"entry_id": "", "cancel_requested": "0"},
            known=snapshot,
        )
    assert await store.snapshot("job1") == before
    assert await redis_client.xlen(store.keys.events) == events_before


async def test_an_illegal_step_anywhere_in_a_chain_writes_nothing(store, redis_client):
    snapshot = await create_queued_job(store, "job1")
    events_before = await redis_client.xlen(store.keys.events)
    with pytest.raises(IllegalTransition):
        await store.chain(
            "job1",
            [Step("verify"), Step("succeed")],
            actor="agent:a",
            expect_state="queued",
            known=snapshot,
        )
    assert await store.snapshot("job1") == snapshot
    assert await redis_client.xlen(store.keys.events) == events_before


async def test_an_empty_chain_is_refused(store):
    with pytest.raises(ValueError, match="at least one step"):
        await store.chain("job1", [], actor="agent:a", expect_state="queued")


async def test_entries_appended_by_a_step_are_written_before_its_events(store, redis_client):
    """A run's last log lines go with the event that ends the run, and readers merging the
    two streams by time must never see that event earlier than the output before it. Shown
    on one stream, where the order is visible: the appended entry comes first."""
    snapshot = await create_queued_job(store, "job1")
    events_key = store.keys.job_events("job1")
    await store.transition(
        "job1",
        "verify",
        actor="agent:a",
        effects=[AppendEntry(events_key, {"marker": "appended"})],
        known=snapshot,
    )
    entries = await redis_client.xrange(events_key)
    kinds = [fields.get(b"marker", fields.get(b"trigger")) for _id, fields in entries]
    assert kinds == [b"submit", b"appended", b"verify"]
