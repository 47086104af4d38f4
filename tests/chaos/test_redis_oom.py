"""Scenario 8: Redis out of memory (`maxmemory` just above current use, `noeviction`).

The real `provision panel` process talks to its own real Redis. Once Redis refuses writes, a
submission must be answered 503 with the stable JSON error shape (docs/architecture.md §8), never a
500,
and every job the panel acknowledged must exist whole: snapshot, `submit` event in both event
streams, index entry and queue entry, nothing else. Raising `maxmemory` again makes
submissions work again.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError

from core.keyring import KeyRing
from core.keys import RedisKeys
from core.runtime.redis_conn import connect
from core.runtime.redis_launcher import RedisServer, find_redis_server, start_redis
from core.signing import peek_job_id
from statemachine.events import event_from_fields
from statemachine.replay import replay_job, snapshot_drift
from statemachine.store import EventStore
from tests.agent_support import make_ring, provision_argv, submit, write_app
from tests.auth_support import bearer, make_token
from tests.chaos.redis_fault_support import base_environ, free_port, panel_process, wait_for_panel

pytestmark = [pytest.mark.redis, pytest.mark.chaos, pytest.mark.slow]

NAMESPACE = "oom"
APP = "demo"
# A few KiB per job, so the headroom below is used up in some tens of submissions.
NOTE = "n" * 4096
HEADROOM_BYTES = 256 * 1024
MAX_SUBMISSIONS = 400  # bounded even if Redis never refused: the test then fails
REFUSALS_WANTED = 5


@pytest.fixture
def own_redis(tmp_path) -> Iterator[RedisServer]:
    """A Redis of this test alone (its own data folder), since its memory limit is changed."""
    server = start_redis(tmp_path / "redis", binary=find_redis_server())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(own_redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    connection = await connect(own_redis.url)
    try:
        yield connection
    finally:
        await connection.aclose()


@pytest.fixture
def installers(tmp_path):
    folder = tmp_path / "installers"
    write_app(folder, APP, "true", inputs=[{"name": "note", "type": "text", "label": "Note"}])
    return folder


@pytest.fixture
def ring(tmp_path) -> KeyRing:
    return make_ring(tmp_path / "keys")


async def _install(session: aiohttp.ClientSession, url: str) -> tuple[int, dict]:
    body = {"app_id": APP, "inputs": {"note": NOTE}}
    async with session.post(f"{url}/api/install", json=body) as response:
        return response.status, await response.json()


async def _stored_job_ids(client: aioredis.Redis, keys: RedisKeys) -> set[str]:
    """Every job id Redis holds anything for: snapshots, event streams, index, queue."""
    found: set[str] = set()
    async for raw in client.scan_iter(match=f"{keys.namespace}:job:*"):
        found.add(raw.decode().split(":")[2])
    found.update(member.decode() for member in await client.zrange(keys.jobs_index, 0, -1))
    for _entry_id, fields in await client.xrange(keys.jobs_stream("local")):
        found.add(peek_job_id(fields[b"envelope"]))
    return found


async def _assert_every_job_whole(
    client: aioredis.Redis, store: EventStore, ring: KeyRing, acknowledged: list[str]
) -> None:
    """Each acknowledged job exists whole, and nothing else exists."""
    keys = store.keys
    assert len(set(acknowledged)) == len(acknowledged)
    assert await _stored_job_ids(client, keys) == set(acknowledged)
    queued = [
        peek_job_id(fields[b"envelope"])
        for _id, fields in await client.xrange(keys.jobs_stream("local"))
    ]
    assert Counter(queued) == Counter(acknowledged)  # exactly one queue entry each
    global_triggers: dict[str, list[str]] = {}
    for stream_id, fields in await client.xrange(keys.events):
        event = event_from_fields(fields, stream_id=stream_id.decode())
        global_triggers.setdefault(event.job_id, []).append(event.trigger)
    assert global_triggers == {job_id: ["submit"] for job_id in acknowledged}
    for job_id in acknowledged:
        snapshot = await store.snapshot(job_id)
        assert snapshot is not None and snapshot["state"] == "queued", (job_id, snapshot)
        assert [event.trigger for event in await store.job_events(job_id)] == ["submit"]
    # The audit's own check: each job's replay is intact and equals its snapshot.
    for job_id in acknowledged:
        replayed = await replay_job(store, ring, job_id)
        problems = [*replayed.problems, *snapshot_drift(replayed, await store.snapshot(job_id))]
        assert not problems, [str(problem) for problem in problems]


def _assert_audit_verifies(environ: dict[str, str]) -> None:
    """`provision audit verify`, the auditor's own command, finds every record intact."""
    result = subprocess.run(
        provision_argv("audit", "verify"),
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(180)
async def test_a_full_redis_gets_503_for_submissions_and_every_acknowledged_job_is_whole(
    tmp_path, own_redis, client, installers, ring
):
    keys = RedisKeys(NAMESPACE)
    store = EventStore(client, keys, ring)
    token = await make_token(own_redis.url, NAMESPACE)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    base = base_environ(
        redis_url=own_redis.url,
        namespace=NAMESPACE,
        keys_file=tmp_path / "keys",
        installers=installers,
        home=tmp_path,
    )
    panel = panel_process(base, tmp_path / "panel.log", port)
    panel.start()
    acknowledged: list[str] = []
    refusals: list[dict] = []
    try:
        async with aiohttp.ClientSession(headers=bearer(token)) as session:
            await wait_for_panel(session, url, panel)
            for _ in range(20):  # some data first, so "current use" includes real jobs
                status, body = await _install(session, url)
                assert status == 201, body
                acknowledged.append(body["job_id"])

            used = int((await client.info("memory"))["used_memory"])
            await client.config_set("maxmemory", used + HEADROOM_BYTES)
            for _ in range(MAX_SUBMISSIONS):
                status, body = await _install(session, url)
                if status == 201:
                    acknowledged.append(body["job_id"])
                    continue
                assert status == 503, (status, body)
                refusals.append(body)
                if len(refusals) >= REFUSALS_WANTED:
                    break
            assert len(refusals) >= REFUSALS_WANTED, "Redis never refused a submission"
            for refusal in refusals:
                assert refusal["error"] == "unavailable", refusal
                assert "out of memory" in refusal["message"], refusal
                assert set(refusal) <= {"error", "message"}, refusal

            # Reading needs no memory: the jobs already stored can still be looked at.
            async with session.get(f"{url}/api/jobs/{acknowledged[0]}") as response:
                assert response.status == 200
                assert (await response.json())["state"] == "queued"

            await _assert_every_job_whole(client, store, ring, acknowledged)
            _assert_audit_verifies(base)

            await client.config_set("maxmemory", 0)  # the operator makes room
            status, body = await _install(session, url)
            assert status == 201, body
            acknowledged.append(body["job_id"])
            await _assert_every_job_whole(client, store, ring, acknowledged)
    finally:
        panel.stop()
    events = [line.get("event") for line in panel.log_lines()]
    assert "panel.redis_out_of_memory" in events, panel.output()
    assert "panel.crashed" not in events, panel.output()


async def test_a_submission_refused_for_memory_writes_nothing_at_all(client, installers, ring):
    """The refusal comes from inside the atomic step, before its first write: no partial job."""
    keys = RedisKeys(NAMESPACE)
    store = EventStore(client, keys, ring)
    stored = [(await submit(store, ring, installers, APP, {"note": "x"})).job_id for _ in range(3)]
    before = sorted(await client.keys("*"))
    lengths = [await client.xlen(keys.events), await client.xlen(keys.jobs_stream("local"))]

    await client.config_set("maxmemory", 1)  # any write is now over the limit
    try:
        with pytest.raises(OutOfMemoryError):
            await submit(store, ring, installers, APP, {"note": "y"})
    finally:
        await client.config_set("maxmemory", 0)

    assert sorted(await client.keys("*")) == before
    assert [await client.xlen(keys.events), await client.xlen(keys.jobs_stream("local"))] == (
        lengths
    )
    await _assert_every_job_whole(client, store, ring, stored)
    job = await submit(store, ring, installers, APP, {"note": "z"})
    await _assert_every_job_whole(client, store, ring, [*stored, job.job_id])
