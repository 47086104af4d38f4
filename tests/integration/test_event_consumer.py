"""The integrations' consumer of prov:events: at-least-once, resume, recovery, filters."""

from __future__ import annotations

import pytest

from statemachine.integrations.consumer import EventConsumer, EventFilter, Undeliverable
from statemachine.store import EventStore
from tests.keyring_fixtures import ring_of

pytestmark = pytest.mark.redis


@pytest.fixture
def store(redis_client, redis_keys) -> EventStore:
    return EventStore(redis_client, redis_keys, ring_of("k1"))


async def make_job(store: EventStore, n: int, app: str, path: list[str]) -> str:
    job_id = f"01J{n:023d}"
    await store.create_job(job_id, actor="panel:a", detail={"app_id": app, "target": "local"})
    for trigger in path:
        detail = {"reason": "cancelled"} if trigger in ("cancel", "fail") else {}
        await store.transition(job_id, trigger, actor="agent:a", attempt=1, detail=detail)
    return job_id


async def take(consumer: EventConsumer, count: int, *, ack: bool = True):
    taken = []
    async for delivery in consumer.deliveries():
        taken.append(delivery)
        if ack:
            await consumer.ack(delivery)
        if len(taken) == count:
            break
    return taken


def consumer_of(client, keys, name: str, **kwargs) -> EventConsumer:
    return EventConsumer(client, keys, group="billing", name=name, block_ms=200, **kwargs)


async def test_every_event_is_delivered_in_order_and_not_again_once_acknowledged(
    redis_client, redis_keys, store
):
    await make_job(store, 1, "web", ["verify", "validate", "start", "succeed"])
    consumer = consumer_of(redis_client, redis_keys, "c1")
    await consumer.ensure_group()
    first = await take(consumer, 5)
    assert [d.event.trigger for d in first] == ["submit", "verify", "validate", "start", "succeed"]
    await make_job(store, 2, "web", [])
    restarted = consumer_of(redis_client, redis_keys, "c1")
    [fresh] = await take(restarted, 1)
    assert (fresh.event.job_id, fresh.event.trigger, fresh.redelivered) == (
        "01J00000000000000000000002",
        "submit",
        False,
    )


async def test_an_unacknowledged_event_comes_back_to_the_restarted_consumer(
    redis_client, redis_keys, store
):
    await make_job(store, 1, "web", ["verify"])
    consumer = consumer_of(redis_client, redis_keys, "c1")
    await consumer.ensure_group()
    await take(consumer, 2, ack=False)  # crashed before acknowledging
    again = await take(consumer_of(redis_client, redis_keys, "c1"), 2)
    assert [(d.event.trigger, d.redelivered) for d in again] == [
        ("submit", True),
        ("verify", True),
    ]


async def test_events_left_pending_by_a_dead_consumer_are_taken_over_after_the_idle_time(
    redis_client, redis_keys, store
):
    await make_job(store, 1, "web", [])
    dead = consumer_of(redis_client, redis_keys, "dead")
    await dead.ensure_group()
    await take(dead, 1, ack=False)
    heir = consumer_of(redis_client, redis_keys, "heir", claim_idle_ms=0)
    [recovered] = await take(heir, 1)
    assert (recovered.event.trigger, recovered.redelivered) == ("submit", True)
    pending = await redis_client.xpending(redis_keys.events, "billing")
    assert pending["pending"] == 0


async def test_filters_skip_other_apps_states_and_triggers_and_acknowledge_them(
    redis_client, redis_keys, store
):
    await make_job(store, 1, "web", ["verify", "validate", "start", "succeed"])
    await make_job(store, 2, "db", ["verify", "validate", "start", "succeed"])
    await make_job(store, 3, "web", ["verify", "cancel"])
    consumer = consumer_of(
        redis_client,
        redis_keys,
        "c1",
        filters=EventFilter(app_ids=frozenset({"web"}), states=frozenset({"succeeded", "failed"})),
    )
    await consumer.ensure_group()
    chosen = await take(consumer, 2)
    assert [(d.event.job_id[-1], d.event.dst) for d in chosen] == [
        ("1", "succeeded"),
        ("3", "failed"),
    ]
    pending = await redis_client.xpending(redis_keys.events, "billing")
    assert pending["pending"] == 0


def collecting_consumer(client, keys, name: str, found: list[Undeliverable], **kwargs):
    async def record(entry: Undeliverable) -> None:
        found.append(entry)
        if entry.pending:
            await client.xack(keys.events, "billing", entry.stream_id)

    return consumer_of(client, keys, name, on_undeliverable=record, **kwargs)


async def test_entries_trimmed_while_pending_are_reported_as_trimmed_not_as_malformed(
    redis_client, redis_keys, store
):
    await make_job(store, 1, "web", ["verify"])
    first = consumer_of(redis_client, redis_keys, "c1")
    await first.ensure_group()
    read = await take(first, 2, ack=False)
    await make_job(store, 2, "web", [])
    # What `audit archive` does: the two pending entries leave the stream.
    await redis_client.xtrim(redis_keys.events, minid=read[-1].stream_id, approximate=False)
    await redis_client.xdel(redis_keys.events, read[-1].stream_id)
    found: list[Undeliverable] = []
    restarted = collecting_consumer(redis_client, redis_keys, "c1", found)
    [fresh] = await take(restarted, 1)
    assert fresh.event.job_id.endswith("2")
    assert [(u.stream_id, u.reason, u.pending) for u in found] == [
        (d.stream_id, "trimmed", True) for d in read
    ]
    assert (await redis_client.xpending(redis_keys.events, "billing"))["pending"] == 0


async def test_trimmed_entries_a_dead_consumer_left_pending_are_reported_by_the_heir(
    redis_client, redis_keys, store
):
    await make_job(store, 1, "web", [])
    dead = consumer_of(redis_client, redis_keys, "dead")
    await dead.ensure_group()
    [lost] = await take(dead, 1, ack=False)
    await redis_client.xdel(redis_keys.events, lost.stream_id)
    await make_job(store, 2, "web", [])
    found: list[Undeliverable] = []
    heir = collecting_consumer(redis_client, redis_keys, "heir", found, claim_idle_ms=0)
    [fresh] = await take(heir, 1)
    assert fresh.event.job_id.endswith("2")
    # XAUTOCLAIM already took it out of the group: reported, nothing left to acknowledge.
    assert [(u.stream_id, u.reason, u.pending) for u in found] == [
        (lost.stream_id, "trimmed", False)
    ]
    assert (await redis_client.xpending(redis_keys.events, "billing"))["pending"] == 0


async def test_an_entry_that_is_no_event_is_reported_as_malformed_with_what_names_it(
    redis_client, redis_keys, store
):
    consumer = collecting_consumer(redis_client, redis_keys, "c1", found := [])
    await consumer.ensure_group()
    bogus = await redis_client.xadd(
        redis_keys.events, {"event_id": "01JBOGUS", "job_id": "j" * 500, "v": "9" * 400}
    )
    await make_job(store, 1, "web", [])
    [good] = await take(consumer, 1)
    assert good.event.trigger == "submit"
    [entry] = found
    assert (entry.stream_id, entry.reason, entry.pending) == (bogus.decode(), "malformed", True)
    assert entry.hints == {"event_id": "01JBOGUS", "job_id": "j" * 64}
    assert entry.problem
    assert (await redis_client.xpending(redis_keys.events, "billing"))["pending"] == 0


async def test_the_job_to_app_cache_stays_bounded_and_filters_stay_right_past_it(
    redis_client, redis_keys, store
):
    for n in range(1, 9):
        await make_job(store, n, "web" if n % 2 else "db", [])
    for n in range(1, 9):  # every job's second event comes after all the first ones
        await store.transition(f"01J{n:023d}", "verify", actor="agent:a", attempt=1)
    consumer = consumer_of(
        redis_client,
        redis_keys,
        "c1",
        filters=EventFilter(app_ids=frozenset({"web"})),
        app_cache_size=3,
    )
    await consumer.ensure_group()
    chosen = await take(consumer, 8)
    assert consumer.cached_apps == 3
    # Evicted jobs' apps were read again from their snapshots: still only `web` jobs.
    assert sorted((d.event.job_id[-1], d.event.trigger) for d in chosen) == sorted(
        (str(n), trigger) for n in (1, 3, 5, 7) for trigger in ("submit", "verify")
    )
