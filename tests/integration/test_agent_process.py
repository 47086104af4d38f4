"""Real `provision agent` processes: crash recovery, two agents, graceful stop, own logs."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from core.keys import AGENTS_GROUP
from statemachine.store import EventStore
from tests.agent_support import (
    AgentProcess,
    agent_environ,
    submit,
    wait_for_state,
    wait_until,
    write_app,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TERMINAL = {"succeeded", "failed"}


def runs_of(effects: Path, job_id: str) -> list[str]:
    if not effects.exists():
        return []
    return [line for line in effects.read_text().splitlines() if line.startswith(job_id)]


def recording(effects: Path, then: str) -> str:
    return f'echo "$PROV_JOB_ID $PROV_ATTEMPT $$" >> {effects}\n{then}'


async def test_an_agent_killed_mid_job_is_replaced_and_the_job_ends_exactly_once(
    installers, ring, store, spawn, tmp_path, redis_client, redis_keys
):
    effects = tmp_path / "effects.log"
    script = recording(effects, '[ "$PROV_ATTEMPT" -ge 2 ] || sleep 300')
    write_app(installers, "slow", script, retry={"max_retries": 2, "base_delay": 0.2, "factor": 2})
    first = spawn("agent-a")
    job = await submit(store, ring, installers, "slow")
    await wait_for_state(store, job.job_id, "running", timeout_s=30)
    await wait_until(lambda: runs_of(effects, job.job_id), message="attempt 1 started")
    first.signal(signal.SIGKILL)
    first.wait(10)
    spawn("agent-b")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=60)
    assert snapshot["state"] == "succeeded"
    events = await store.job_events(job.job_id)
    assert [e.trigger for e in events].count("succeed") == 1
    lost = [e for e in events if e.trigger == "retry"]
    assert [e.detail["reason"] for e in lost] == ["agent_lost"]
    runs = runs_of(effects, job.job_id)
    assert [line.split()[1] for line in runs] == ["1", "2"]
    # The orphan of attempt 1 (its agent died, the script lived on) was killed before 2.
    assert not _alive(int(runs[0].split()[2]))
    stream = redis_keys.jobs_stream("local")
    await wait_until(
        lambda: _no_pending(redis_client, stream), timeout_s=20, message="pending list drained"
    )
    _kill_leftovers(job.job_id)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _no_pending(client, stream) -> bool:
    return (await client.xpending(stream, AGENTS_GROUP))["pending"] == 0


def _kill_leftovers(job_id: str) -> None:
    # The killed agent's installer (sleep 300) has no one left to kill it: that is what
    # an agent death means. Clean up so no test leaves processes behind.
    marker = f"PROV_JOB_ID={job_id}".encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                continue


async def test_with_two_agents_a_job_longer_than_the_lease_runs_once(
    installers, ring, store, spawn, tmp_path
):
    effects = tmp_path / "effects.log"
    write_app(installers, "long", recording(effects, "sleep 7"))
    spawn("agent-a", PROV_LEASE_S="2")
    spawn("agent-b", PROV_LEASE_S="2")
    job = await submit(store, ring, installers, "long")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=40)
    assert snapshot["state"] == "succeeded"
    assert len(runs_of(effects, job.job_id)) == 1
    triggers = [e.trigger for e in await store.job_events(job.job_id)]
    assert triggers == ["submit", "verify", "validate", "start", "succeed"]


async def test_sigterm_lets_the_running_job_finish_then_exits_cleanly(
    installers, ring, store, spawn, tmp_path
):
    effects = tmp_path / "effects.log"
    write_app(installers, "short", recording(effects, "sleep 2"))
    agent = spawn("agent-a", PROV_SHUTDOWN_GRACE_S="20")
    job = await submit(store, ring, installers, "short")
    await wait_until(lambda: runs_of(effects, job.job_id), message="the job started")
    second = await submit(store, ring, installers, "short")
    agent.signal(signal.SIGTERM)
    code = await asyncio.to_thread(agent.wait, 30)
    assert code == 0, agent.output()
    snapshot = await store.snapshot(job.job_id)
    assert snapshot is not None and snapshot["state"] == "succeeded"
    queued = await store.snapshot(second.job_id)
    assert queued is not None and queued["state"] == "queued"  # no new job taken


async def test_sigterm_past_the_grace_period_kills_the_job_and_leaves_it_for_reclaim(
    installers, ring, store, spawn, tmp_path
):
    effects = tmp_path / "effects.log"
    write_app(installers, "stubborn", recording(effects, "sleep 300"))
    agent = spawn("agent-a", PROV_SHUTDOWN_GRACE_S="1")
    job = await submit(store, ring, installers, "stubborn")
    await wait_until(lambda: runs_of(effects, job.job_id), message="the job started")
    agent.signal(signal.SIGTERM)
    code = await asyncio.to_thread(agent.wait, 30)
    assert code == 0, agent.output()
    snapshot = await store.snapshot(job.job_id)
    assert snapshot is not None and snapshot["state"] == "running"  # left for reclaim
    pid = int(runs_of(effects, job.job_id)[0].split()[2])
    assert not await asyncio.to_thread(Path(f"/proc/{pid}").exists)


async def test_a_secret_never_reaches_the_agents_own_logs(installers, ring, store, spawn, tmp_path):
    secret = "canary-Agent-Log-5ecret"
    script = 'echo "$ADMIN_PASSWORD"; echo "$ADMIN_PASSWORD" >&2; exit 1'
    write_app(
        installers,
        "leaky",
        script,
        inputs=[{"name": "admin_password", "type": "password", "required": True}],
    )
    agent = spawn("agent-a", PROV_LOG_LEVEL="debug")
    job = await submit(store, ring, installers, "leaky", {"admin_password": secret})
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=30)
    assert snapshot["reason"] == "validation_error"
    agent.signal(signal.SIGTERM)
    await asyncio.to_thread(agent.wait, 30)
    output = agent.output()
    assert job.job_id in output  # the log did talk about the job
    assert secret not in output


async def test_the_agent_survives_redis_restarts_and_a_waiting_retry_runs_after_them(
    installers, ring, tmp_path
):
    """Redis stopped cleanly, then killed, while a job waits to retry: nothing is lost."""
    import redis.asyncio as aioredis

    from core.keys import RedisKeys
    from core.runtime.redis_launcher import start_redis

    data = tmp_path / "redis-data"
    server = start_redis(data, fsync="always")
    effects = tmp_path / "effects.log"
    write_app(
        installers,
        "flaky",
        recording(effects, '[ "$PROV_ATTEMPT" -ge 2 ] || exit 2'),
        retry={"max_retries": 1, "base_delay": 4, "factor": 1},
    )
    env = agent_environ(
        redis_url=server.url,
        namespace="restart",
        keys_file=tmp_path / "hmac.keys",
        installers=installers,
        agent_id="agent-r",
    )
    agent = AgentProcess(env, tmp_path / "agent.log")
    client = aioredis.from_url(server.url)
    try:
        store = EventStore(client, RedisKeys("restart"), ring)
        job = await submit(store, ring, installers, "flaky")
        await wait_for_state(store, job.job_id, "retry_wait", timeout_s=30)
        server.stop()
        server = start_redis(data, fsync="always")
        await client.aclose()
        client = aioredis.from_url(server.url)
        store = EventStore(client, RedisKeys("restart"), ring)
        snapshot = await store.snapshot(job.job_id)
        assert snapshot is not None and snapshot["state"] == "retry_wait"
        server.kill()
        server = start_redis(data, fsync="always")
        await client.aclose()
        client = aioredis.from_url(server.url)
        store = EventStore(client, RedisKeys("restart"), ring)
        snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=60)
        assert (snapshot["state"], snapshot["attempt"]) == ("succeeded", "2"), agent.output()
        assert agent.process.poll() is None  # it never died of the outages
        second = await submit(store, ring, installers, "flaky")
        await wait_for_state(store, second.job_id, {"retry_wait", "succeeded"}, timeout_s=30)
    finally:
        agent.close()
        await client.aclose()
        server.stop()
