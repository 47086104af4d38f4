"""The event store against a real Redis: atomic transitions, side effects, replay, tampering."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from core.errors import IllegalTransition, JobNotFound, TransitionConflict
from core.keys import AGENTS_GROUP
from statemachine.events import event_from_fields
from statemachine.replay import replay_job, snapshot_drift
from statemachine.store import (
    AckEntry,
    AppendEntry,
    EventStore,
    IndexJob,
    ScheduleRetry,
    SetJobFields,
    Unschedule,
)
from tests.keyring_fixtures import ring_of

pytestmark = pytest.mark.redis

RING = ring_of("k1")


@pytest.fixture
def store(redis_client: aioredis.Redis, redis_keys) -> EventStore:
    return EventStore(redis_client, redis_keys, RING)


async def _submit(store: EventStore, job_id: str, **extra) -> None:
    keys = store.keys
    await store.create_job(
        job_id,
        actor="panel:alice",
        detail={"app_id": "hello-web", "target": "local", "requested_by": "alice"},
        effects=[
            IndexJob(keys.jobs_index, 1000, job_id),
            AppendEntry(
                keys.jobs_stream("local"), {"envelope": f"env-{job_id}", "sig": "s", "kid": "k1"}
            ),
        ],
        **extra,
    )


async def test_submit_writes_event_snapshot_index_and_stream_entry_in_one_step(store, redis_client):
    keys = store.keys
    await _submit(store, "job1")
    snapshot = await store.snapshot("job1")
    assert snapshot is not None
    assert snapshot["state"] == "queued"
    assert snapshot["app_id"] == "hello-web"
    assert snapshot["requested_by"] == "alice"
    assert snapshot["cancel_requested"] == "0"
    assert snapshot["event_count"] == "1"
    assert await redis_client.zscore(keys.jobs_index, "job1") == 1000
    entries = await redis_client.xrange(keys.jobs_stream("local"))
    assert [fields[b"envelope"] for _, fields in entries] == [b"env-job1"]
    [event] = await store.job_events("job1")
    assert (event.trigger, event.src, event.dst, event.attempt) == ("submit", "", "queued", 0)


async def test_a_job_id_can_be_submitted_only_once(store, redis_client):
    await _submit(store, "job1")
    with pytest.raises(TransitionConflict):
        await _submit(store, "job1")
    assert await redis_client.xlen(store.keys.jobs_stream("local")) == 1
    assert len(await store.job_events("job1")) == 1


async def test_both_event_streams_hold_the_same_events_in_order(store, redis_client):
    await _submit(store, "job1")
    await store.transition("job1", "verify", actor="agent:a")
    await store.transition("job1", "validate", actor="agent:a")
    await store.transition("job1", "start", actor="agent:a", attempt=1)
    per_job = await store.job_events("job1")
    global_events = [
        event_from_fields(fields) for _, fields in await redis_client.xrange(store.keys.events)
    ]
    assert global_events == per_job
    assert [e.dst for e in per_job] == ["queued", "verified", "validated", "running"]
    assert per_job[-1].attempt == 1


async def test_an_illegal_transition_raises_and_writes_nothing(store, redis_client):
    await _submit(store, "job1")
    before = await store.snapshot("job1")
    with pytest.raises(IllegalTransition):
        await store.transition("job1", "succeed", actor="agent:a")
    assert await store.snapshot("job1") == before
    assert await redis_client.xlen(store.keys.events) == 1


async def test_a_transition_on_an_unknown_job_raises_job_not_found(store):
    with pytest.raises(JobNotFound):
        await store.transition("nope", "verify", actor="agent:a")


async def test_expect_state_refuses_a_job_that_moved_since_the_caller_looked(store):
    await _submit(store, "job1")
    await store.transition("job1", "verify", actor="agent:a")
    with pytest.raises(TransitionConflict):
        await store.transition("job1", "cancel", actor="panel:bob", expect_state="queued")


@pytest.mark.parametrize(
    ("setup", "racers"),
    [
        (["verify", "validate"], ["start", "start"]),
        ([], ["verify", "verify"]),
        ([], ["cancel", "fail"]),
        (["verify", "validate", "start"], ["succeed", "retry"]),
        (["verify", "validate", "start"], ["succeed", "cancel"]),
    ],
)
async def test_two_racing_transitions_from_the_same_state_have_exactly_one_winner(
    redis_url, redis_keys, setup, racers
):
    # Separate connections, so the two sides really interleave on the server.
    clients = [aioredis.from_url(redis_url) for _ in racers]
    try:
        stores = [EventStore(client, redis_keys, RING) for client in clients]
        for job in range(25):
            job_id = f"race{job}"
            await _submit(stores[0], job_id)
            for trigger in setup:
                await stores[0].transition(job_id, trigger, actor="agent:a", attempt=1)
            results = await asyncio.gather(
                *(
                    side.transition(job_id, trigger, actor=f"agent:{n}", attempt=1)
                    for n, (side, trigger) in enumerate(zip(stores, racers, strict=True))
                ),
                return_exceptions=True,
            )
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, BaseException)]
            assert len(winners) == 1, results
            # The loser either read after the winner wrote (the machine refuses) or read
            # before (the atomic step refuses): never both win, never a half write.
            assert all(isinstance(r, TransitionConflict | IllegalTransition) for r in losers)
            events = await stores[0].job_events(job_id)
            assert len(events) == 1 + len(setup) + 1
            snapshot = await stores[0].snapshot(job_id)
            assert snapshot is not None and snapshot["state"] == winners[0].event.dst
    finally:
        for client in clients:
            await client.aclose()


class _ReadersMeetStore(EventStore):
    """Holds every reader until all have read the snapshot: a worst-case interleaving."""

    def __init__(self, *args, barrier: asyncio.Barrier, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._barrier = barrier

    async def snapshot(self, job_id: str):
        snapshot = await super().snapshot(job_id)
        await self._barrier.wait()
        return snapshot


async def test_when_both_read_before_either_writes_the_atomic_step_picks_one(
    redis_client, redis_url, redis_keys
):
    await _submit(EventStore(redis_client, redis_keys, RING), "job1")
    barrier = asyncio.Barrier(2)
    clients = [aioredis.from_url(redis_url) for _ in range(2)]
    try:
        racers = [_ReadersMeetStore(c, redis_keys, RING, barrier=barrier) for c in clients]
        results = await asyncio.gather(
            racers[0].transition("job1", "verify", actor="agent:a"),
            racers[1].transition("job1", "cancel", actor="panel:b", detail={"reason": "cancelled"}),
            return_exceptions=True,
        )
    finally:
        for client in clients:
            await client.aclose()
    conflicts = [r for r in results if isinstance(r, TransitionConflict)]
    assert len(conflicts) == 1, results
    events = await EventStore(redis_client, redis_keys, RING).job_events("job1")
    assert len(events) == 2


async def test_ack_and_retry_schedule_happen_in_the_same_step_as_the_event(store, redis_client):
    keys = store.keys
    stream = keys.jobs_stream("local")
    await _submit(store, "job1")
    await redis_client.xgroup_create(stream, AGENTS_GROUP, id="0")
    [[_, [(entry_id, _fields)]]] = await redis_client.xreadgroup(
        AGENTS_GROUP, "agent-a", {stream: ">"}, count=1
    )
    await store.transition(
        "job1",
        "verify",
        actor="agent:a",
        detail={"entry_id": entry_id.decode()},
        effects=[SetJobFields({"entry_id": entry_id.decode()})],
    )
    snapshot = await store.snapshot("job1")
    assert snapshot is not None and snapshot["entry_id"] == entry_id.decode()
    await store.transition("job1", "validate", actor="agent:a")
    await store.transition("job1", "start", actor="agent:a", attempt=1)
    assert (await redis_client.xpending(stream, AGENTS_GROUP))["pending"] == 1
    await store.transition(
        "job1",
        "retry",
        actor="agent:a",
        detail={"exit_code": 2, "delay_s": 10, "next_retry_at": 5000},
        effects=[
            AckEntry(stream, AGENTS_GROUP, entry_id.decode()),
            ScheduleRetry(keys.retry, 5000, "job1"),
        ],
    )
    assert (await redis_client.xpending(stream, AGENTS_GROUP))["pending"] == 0
    assert await redis_client.zscore(keys.retry, "job1") == 5000
    snapshot = await store.snapshot("job1")
    assert snapshot is not None
    assert (snapshot["state"], snapshot["next_retry_at"], snapshot["exit_code"]) == (
        "retry_wait",
        "5000",
        "2",
    )
    await store.transition(
        "job1", "start", actor="agent:a", attempt=2, effects=[Unschedule(keys.retry, "job1")]
    )
    assert await redis_client.zscore(keys.retry, "job1") is None
    snapshot = await store.snapshot("job1")
    assert snapshot is not None and snapshot["next_retry_at"] == "" and snapshot["exit_code"] == ""


async def test_a_losing_transition_performs_none_of_its_side_effects(store, redis_client):
    keys = store.keys
    await _submit(store, "job1")
    await store.transition("job1", "cancel", actor="panel:bob", detail={"reason": "cancelled"})
    with pytest.raises(IllegalTransition):
        await store.transition(
            "job1", "verify", actor="agent:a", effects=[ScheduleRetry(keys.retry, 1, "job1")]
        )
    assert await redis_client.zcard(keys.retry) == 0


async def test_cancel_is_requested_only_on_unfinished_jobs(store):
    await _submit(store, "job1")
    assert await store.request_cancel("job1") == "queued"
    snapshot = await store.snapshot("job1")
    assert snapshot is not None and snapshot["cancel_requested"] == "1"
    await store.transition("job1", "cancel", actor="agent:a", detail={"reason": "cancelled"})
    await _submit(store, "job2")
    await store.transition("job2", "fail", actor="agent:a", detail={"reason": "expired"})
    assert await store.request_cancel("job2") == "failed"
    snapshot = await store.snapshot("job2")
    assert snapshot is not None and snapshot["cancel_requested"] == "0"
    assert await store.request_cancel("missing") == ""


PATHS = [
    ["verify", "validate", "start", "succeed"],
    ["verify", "validate", "start", "retry", "start", "succeed"],
    ["verify", "validate", "start", "retry", "start", "retry", "start", "fail"],
    ["fail"],
    ["verify", "cancel"],
    ["verify", "validate", "start", "cancel"],
    ["verify", "validate"],
]


async def test_replay_equals_the_live_snapshot_for_many_jobs(store):
    rng = random.Random(7)
    jobs = {}
    for n in range(150):
        job_id = f"job{n:03d}"
        path = rng.choice(PATHS)
        await _submit(store, job_id)
        attempt = 0
        for trigger in path:
            if trigger == "start":
                attempt += 1
            detail = {}
            if trigger in ("fail", "cancel"):
                detail = {"reason": "cancelled" if trigger == "cancel" else "install_error"}
            if trigger == "retry":
                detail = {"exit_code": 2, "delay_s": 10, "next_retry_at": 99}
            if trigger == "succeed":
                detail = {"exit_code": 0}
            await store.transition(job_id, trigger, actor="agent:a", attempt=attempt, detail=detail)
        jobs[job_id] = path
    for job_id in jobs:
        replayed = await replay_job(store, RING, job_id)
        assert replayed.intact, replayed.problems
        stored = await store.snapshot(job_id)
        assert snapshot_drift(replayed, stored) == []
        assert replayed.state == stored["state"]


async def test_replay_detects_a_deleted_event(store, redis_client):
    await _submit(store, "job1")
    await store.transition("job1", "verify", actor="agent:a")
    await store.transition("job1", "validate", actor="agent:a")
    entries = await redis_client.xrange(store.keys.job_events("job1"))
    await redis_client.xdel(store.keys.job_events("job1"), entries[1][0])
    replayed = await replay_job(store, RING, "job1")
    assert any("broken chain" in p.problem for p in replayed.problems)


async def test_replay_detects_a_forged_event_appended_without_the_key(store, redis_client):
    await _submit(store, "job1")
    [event] = await store.job_events("job1")
    forged = {
        **event.stream_fields(),
        "trigger": "fail",
        "src": "queued",
        "dst": "failed",
        "prev": event.hash,
        "event_id": "01FORGED",
        "detail": '{"reason":"cancelled"}',
    }
    await redis_client.xadd(store.keys.job_events("job1"), forged)
    replayed = await replay_job(store, RING, "job1")
    # The forger kept a genuine (hash, mac) pair; the hash no longer fits the content, and
    # recomputing it would need the key for a fresh mac (see the unit tests).
    assert [(p.event_id, p.problem) for p in replayed.problems] == [
        ("01FORGED", "hash does not match the event's content")
    ]


async def test_replay_detects_a_snapshot_edited_outside_the_store(store, redis_client):
    await _submit(store, "job1")
    await redis_client.hset(store.keys.job("job1"), "state", "succeeded")
    replayed = await replay_job(store, RING, "job1")
    drift = snapshot_drift(replayed, await store.snapshot("job1"))
    assert [p.problem for p in drift] == [
        "snapshot drift: state is 'succeeded', events say 'queued'"
    ]


async def test_replay_reports_a_garbage_entry_in_the_job_stream(store, redis_client):
    await _submit(store, "job1")
    await redis_client.xadd(store.keys.job_events("job1"), {"junk": "1"})
    replayed = await replay_job(store, RING, "job1")
    assert any("malformed event" in p.problem for p in replayed.problems)


async def test_expected_bookkeeping_fields_must_still_hold_inside_the_atomic_step(store):
    await _submit(store, "job1")
    await store.transition(
        "job1", "verify", actor="agent:a", effects=[SetJobFields({"entry_id": "5-0"})]
    )
    with pytest.raises(TransitionConflict):
        await store.transition(
            "job1", "validate", actor="agent:stale", expect_fields={"entry_id": "4-0"}
        )
    snapshot = await store.snapshot("job1")
    assert snapshot is not None and snapshot["state"] == "verified"
    await store.transition("job1", "validate", actor="agent:a", expect_fields={"entry_id": "5-0"})
