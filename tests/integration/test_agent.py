"""The agent against a real Redis: layers, outcomes, retries, cancel, dead letters, secrets.

The agent runs in-process here (its `run()` as a task), with real installers run by bash.
Whole-process behaviour (SIGKILL, two agents, SIGTERM) is in test_agent_process.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from agent import worker as worker_module
from agent.joblog import JobLogWriter
from agent.processor import JobProcessor
from agent.queue import JobQueue
from agent.worker import Agent
from core.errors import DutyFailed
from core.keyring import KeyRing
from core.keys import AGENTS_GROUP
from core.runtime.catalogue import Catalogue
from core.runtime.settings import AgentSettings
from core.signing import canonical_bytes, sign
from statemachine.replay import replay_job, snapshot_drift
from statemachine.store import AppendEntry, EventStore, IndexJob, ScheduleRetry
from tests.agent_support import (
    agent_environ,
    submit,
    wait_for_state,
    wait_until,
    write_app,
)
from tests.keyring_fixtures import ring_of

pytestmark = pytest.mark.redis

TERMINAL = {"succeeded", "failed"}
FAST_RETRY = {"max_retries": 2, "base_delay": 0.2, "factor": 2}


@pytest.fixture
def effects(tmp_path: Path) -> Path:
    """A file each test installer appends `job attempt pid` to: proof of what ran."""
    return tmp_path / "effects.log"


@pytest.fixture
def settings_for(tmp_path, redis_url, namespace, installers) -> Callable[..., AgentSettings]:
    """Settings of an agent on this test's Redis and installers: `settings_for(id, PROV_X=...)`."""

    def make(agent_id: str, **extra: str) -> AgentSettings:
        env = agent_environ(
            redis_url=redis_url,
            namespace=namespace,
            keys_file=tmp_path / "hmac.keys",
            installers=installers,
            agent_id=agent_id,
            **extra,
        )
        return AgentSettings.from_env(env)

    return make


@pytest.fixture
def settings(settings_for) -> AgentSettings:
    return settings_for("agent-test", PROV_LEASE_S="2")


class RunningAgent:
    def __init__(self, agent: Agent, task: asyncio.Task[None]) -> None:
        self.agent = agent
        self.task = task

    async def stop(self) -> None:
        self.agent.stop()
        await asyncio.wait_for(self.task, timeout=30)


@pytest.fixture
async def start_agent(redis_url, ring):
    started: list[RunningAgent] = []
    clients: list[aioredis.Redis] = []

    async def start(settings: AgentSettings) -> RunningAgent:
        client = aioredis.from_url(redis_url, socket_timeout=10)
        clients.append(client)
        agent = Agent(settings, client, lambda: ring)
        running = RunningAgent(agent, asyncio.create_task(agent.run()))
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            running.agent.stop(immediate=True)
            await asyncio.wait_for(running.task, timeout=30)
    for client in clients:
        await client.aclose()


def effect_lines(effects: Path) -> list[list[str]]:
    if not effects.exists():
        return []
    return [line.split() for line in effects.read_text().splitlines()]


def recording(effects: Path, then: str = "exit 0") -> str:
    return f'echo "$PROV_JOB_ID $PROV_ATTEMPT $$" >> {effects}\n{then}'


async def triggers(store: EventStore, job_id: str) -> list[str]:
    return [event.trigger for event in await store.job_events(job_id)]


async def test_a_job_runs_to_succeeded_with_every_step_recorded(
    installers, effects, ring, store, settings, start_agent, redis_client, redis_keys
):
    write_app(
        installers,
        "hello",
        recording(effects, 'echo "hello $NAME"; echo oops >&2'),
        inputs=[{"name": "name", "type": "string", "default": "world"}],
    )
    await start_agent(settings)
    job = await submit(store, ring, installers, "hello", {"name": "tester"})
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"
    assert snapshot["exit_code"] == "0"
    assert snapshot["attempt"] == "1"
    assert await triggers(store, job.job_id) == ["submit", "verify", "validate", "start", "succeed"]
    log = await redis_client.xrange(redis_keys.job_log(job.job_id))
    lines = [(f[b"stream"], f[b"line"], f[b"attempt"]) for _, f in log]
    assert (b"stdout", b"hello tester", b"1") in lines
    assert (b"stderr", b"oops", b"1") in lines
    pending = await redis_client.xpending(redis_keys.jobs_stream("local"), AGENTS_GROUP)
    assert pending["pending"] == 0
    assert [row[0] for row in effect_lines(effects)] == [job.job_id]
    replayed = await replay_job(store, ring, job.job_id)
    assert replayed.intact and snapshot_drift(replayed, await store.snapshot(job.job_id)) == []


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("exit 1", "validation_error"),
        ("exit 3", "config_error"),
        ("exit 7", "unknown_exit"),
        ("kill -9 $$", "killed"),
    ],
)
async def test_each_exit_ends_the_job_with_its_reason(
    installers, effects, ring, store, settings, start_agent, script, reason
):
    write_app(installers, "ends", recording(effects, script), retry=FAST_RETRY)
    await start_agent(settings)
    job = await submit(store, ring, installers, "ends")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", reason)
    assert len(effect_lines(effects)) == 1  # no retry for any of these


async def test_exit_2_is_retried_with_backoff_then_fails_with_install_error(
    installers, effects, ring, store, settings, start_agent
):
    write_app(installers, "flaky", recording(effects, "exit 2"), retry=FAST_RETRY)
    await start_agent(settings)
    job = await submit(store, ring, installers, "flaky")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"], snapshot["attempt"]) == (
        "failed",
        "install_error",
        "3",
    )
    events = await store.job_events(job.job_id)
    retries = [e for e in events if e.trigger == "retry"]
    assert [e.detail["delay_s"] for e in retries] == [0.2, 0.4]
    starts = [e for e in events if e.trigger == "start"]
    assert [e.attempt for e in starts] == [1, 2, 3]
    # Each next start comes no earlier than its retry's due time.
    for retry, start in zip(retries, starts[1:], strict=True):
        assert start.at >= retry.detail["next_retry_at"]
    assert [row[1] for row in effect_lines(effects)] == ["1", "2", "3"]


async def test_a_flaky_install_succeeds_on_its_second_attempt(
    installers, effects, ring, store, settings, start_agent
):
    write_app(
        installers,
        "flaky",
        recording(effects, '[ "$PROV_ATTEMPT" -ge 2 ] || exit 2'),
        retry=FAST_RETRY,
    )
    await start_agent(settings)
    job = await submit(store, ring, installers, "flaky")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["attempt"]) == ("succeeded", "2")
    assert await triggers(store, job.job_id) == [
        "submit",
        "verify",
        "validate",
        "start",
        "retry",
        "start",
        "succeed",
    ]


async def test_a_failing_verify_command_fails_the_job(
    installers, effects, ring, store, settings, start_agent
):
    write_app(installers, "unverified", recording(effects), verify="test -e /nonexistent/x")
    await start_agent(settings)
    job = await submit(store, ring, installers, "unverified")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "verify_failed")


async def test_a_passing_verify_command_sees_the_inputs(
    installers, effects, ring, store, settings, start_agent
):
    write_app(
        installers,
        "verified",
        recording(effects),
        verify='test "$PORT" = 8080',
        inputs=[{"name": "port", "type": "port", "default": 8080}],
    )
    await start_agent(settings)
    job = await submit(store, ring, installers, "verified")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"


async def test_a_timeout_kills_the_whole_job_including_setsid_children(
    installers, effects, ring, store, settings, start_agent
):
    script = recording(effects, "trap '' TERM\nsetsid sleep 300 &\nsleep 300 &\nsleep 300")
    write_app(installers, "hangs", script, timeout=1)
    await start_agent(settings)
    job = await submit(store, ring, installers, "hangs")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=30)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "timeout")
    assert _processes_of(job.job_id) == []


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for a parent that never reaps it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_of(job_id: str) -> list[int]:
    found = []
    marker = f"PROV_JOB_ID={job_id}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


async def test_cancel_stops_a_running_job_within_a_second_or_two(
    installers, effects, ring, store, settings, start_agent
):
    write_app(installers, "long", recording(effects, "sleep 300"))
    await start_agent(settings)
    job = await submit(store, ring, installers, "long")
    await wait_for_state(store, job.job_id, "running")
    await wait_until(effects.exists, message="the script started")
    assert await store.request_cancel(job.job_id) == "running"
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=10)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "cancelled")
    assert (await store.job_events(job.job_id))[-1].trigger == "cancel"
    assert _processes_of(job.job_id) == []


async def test_a_retry_survives_an_agent_restart(
    installers, effects, ring, store, settings, start_agent
):
    retry = {"max_retries": 1, "base_delay": 2, "factor": 1}
    write_app(
        installers, "flaky", recording(effects, '[ "$PROV_ATTEMPT" -ge 2 ] || exit 2'), retry=retry
    )
    first = await start_agent(settings)
    job = await submit(store, ring, installers, "flaky")
    await wait_for_state(store, job.job_id, "retry_wait")
    await first.stop()
    await start_agent(settings)
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["attempt"]) == ("succeeded", "2")


async def test_jobs_of_one_app_never_overlap_even_with_spare_concurrency(
    installers, effects, ring, store, tmp_path, start_agent, settings_for
):
    agent_settings = settings_for("agent-wide", PROV_AGENT_CONCURRENCY="3")
    lock_dir = tmp_path / "busy"
    script = (
        f"mkdir {lock_dir} || {{ echo overlap >> {effects}; exit 9; }}\n"
        f"sleep 0.3; rmdir {lock_dir}\n" + recording(effects)
    )
    write_app(installers, "serial", script)
    await start_agent(agent_settings)
    jobs = [await submit(store, ring, installers, "serial") for _ in range(3)]
    for job in jobs:
        snapshot = await wait_for_state(store, job.job_id, TERMINAL)
        assert snapshot["state"] == "succeeded"
    assert "overlap" not in effects.read_text()


# --- the security layers -----------------------------------------------------------------


async def forge(
    store: EventStore,
    signing_ring: KeyRing,
    envelope: dict,
    *,
    sig: str | None = None,
    kid: str | None = None,
    body: bytes | None = None,
    record: dict | None = None,
) -> str:
    """Store a job whose stream entry carries exactly the given (possibly hostile) envelope;
    `record` changes what the job's own record (its submit event) says."""
    payload = body if body is not None else canonical_bytes(envelope)
    used_kid, good_sig = sign(signing_ring, payload)
    keys = store.keys
    job_id = envelope["job_id"]
    await store.create_job(
        job_id,
        actor="panel:mallory",
        detail={
            "app_id": envelope["app_id"],
            "target": "local",
            "requested_by": "mallory",
            **(record or {}),
        },
        effects=[
            IndexJob(keys.jobs_index, 1, job_id),
            AppendEntry(
                keys.jobs_stream("local"),
                {
                    "envelope": payload.decode("utf-8", "surrogateescape"),
                    "sig": sig if sig is not None else good_sig,
                    "kid": kid if kid is not None else used_kid,
                },
            ),
        ],
    )
    return job_id


def envelope_for(installers: Path, app_id: str, ring: KeyRing, **changes) -> dict:
    from time import time

    from ulid import ULID

    app = Catalogue.load(installers).get(app_id)
    now = int(time())
    envelope = {
        "v": 1,
        "job_id": str(ULID()),
        "app_id": app_id,
        "app_fingerprint": app.fingerprint if app else "sha256:00",
        "target": "local",
        "inputs": {},
        "sealed": {},
        "requested_by": "mallory",
        "issued_at": now,
        "expires_at": now + 600,
        "kid": ring.signing_kid,
    }
    envelope.update(changes)
    return envelope


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("forged_signature", "bad_signature"),
        ("changed_byte", "bad_signature"),
        ("unknown_kid", "unknown_key"),
        ("expired", "expired"),
        ("from_the_future", "expired"),
        ("traversal_app_id", "not_whitelisted"),
        ("unknown_app", "not_whitelisted"),
        ("fingerprint_mismatch", "fingerprint_mismatch"),
        ("invalid_inputs", "invalid_inputs"),
        ("unknown_input", "invalid_inputs"),
        # A well-signed envelope must also be the one the job's record asked for.
        ("record_names_another_app", "malformed"),
        ("envelope_names_another_target", "malformed"),
    ],
)
async def test_every_layer_refuses_its_bad_case_and_nothing_executes(
    installers, effects, ring, store, settings, start_agent, case, reason
):
    write_app(
        installers,
        "target",
        recording(effects),
        inputs=[{"name": "port", "type": "port", "default": 8080}],
    )
    envelope = envelope_for(installers, "target", ring, inputs={"port": "8080"})
    kwargs: dict = {}
    if case == "forged_signature":
        kwargs["sig"] = "0" * 64
    elif case == "changed_byte":
        body = canonical_bytes(envelope)
        kwargs["body"] = body
        kwargs["sig"] = sign(ring, body.replace(b'"8080"', b'"8081"'))[1]
    elif case == "unknown_kid":
        envelope["kid"] = "zz"
        job_id = await forge(store, ring_of("zz"), envelope)
    elif case == "expired":
        envelope.update(
            issued_at=envelope["issued_at"] - 7200, expires_at=envelope["issued_at"] - 3600
        )
    elif case == "from_the_future":
        envelope.update(
            issued_at=envelope["issued_at"] + 600, expires_at=envelope["issued_at"] + 1200
        )
    elif case == "traversal_app_id":
        envelope["app_id"] = "../target"
    elif case == "unknown_app":
        envelope["app_id"] = "nope"
    elif case == "fingerprint_mismatch":
        envelope["app_fingerprint"] = "sha256:" + "0" * 64
    elif case == "invalid_inputs":
        envelope["inputs"] = {"port": "99999"}
    elif case == "unknown_input":
        envelope["inputs"] = {"port": "8080", "evil": "x"}
    elif case == "record_names_another_app":
        kwargs["record"] = {"app_id": "another"}
    elif case == "envelope_names_another_target":
        envelope["target"] = "web-1"
    if case != "unknown_kid":
        job_id = await forge(store, ring, envelope, **kwargs)
    await start_agent(settings)
    snapshot = await wait_for_state(store, job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", reason)
    assert not effects.exists()


async def test_a_symlinked_script_is_refused_and_nothing_executes(
    installers, effects, ring, store, settings, start_agent, tmp_path
):
    folder = write_app(installers, "linked", recording(effects))
    job = await submit(store, ring, installers, "linked")
    outside = tmp_path / "outside.sh"
    outside.write_bytes((folder / "install.sh").read_bytes())
    (folder / "install.sh").unlink()
    (folder / "install.sh").symlink_to(outside)
    await start_agent(settings)
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "failed"
    assert snapshot["reason"] == "unsafe_path"
    assert not effects.exists()


async def test_a_script_or_folder_others_could_change_is_refused_and_nothing_executes(
    installers, effects, ring, store, settings, start_agent, tmp_path
):
    # Both jobs were submitted while their apps were sound; then a local user got a way to
    # change what root runs: a 0777 install.sh, and an app folder swapped for a symbolic
    # link to one outside the installers (same bytes, so the fingerprint still matches).
    writable = write_app(installers, "writable", recording(effects))
    job_writable = await submit(store, ring, installers, "writable")
    write_app(installers, "linked", recording(effects))
    job_linked = await submit(store, ring, installers, "linked")
    (writable / "install.sh").chmod(0o777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (installers / "linked").rename(elsewhere / "linked")
    (installers / "linked").symlink_to(elsewhere / "linked", target_is_directory=True)
    await start_agent(settings)
    for job in (job_writable, job_linked):
        snapshot = await wait_for_state(store, job.job_id, TERMINAL)
        assert (snapshot["state"], snapshot["reason"]) == ("failed", "unsafe_path")
        assert "start" not in await triggers(store, job.job_id)
    assert not effects.exists()


async def test_the_script_gets_its_jobs_target_as_prov_target(
    installers, effects, ring, store, settings, start_agent
):
    write_app(installers, "where", f'echo "${{PROV_TARGET-unset}}" > {effects}')
    await start_agent(settings)
    job = await submit(store, ring, installers, "where")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"
    assert effects.read_text() == "local\n"


async def test_a_replayed_entry_goes_to_dead_letters_and_leaves_the_job_alone(
    installers, effects, ring, store, settings, start_agent, redis_client, redis_keys
):
    write_app(installers, "once", recording(effects))
    await start_agent(settings)
    job = await submit(store, ring, installers, "once")
    await wait_for_state(store, job.job_id, TERMINAL)
    before = await store.job_events(job.job_id)
    stream = redis_keys.jobs_stream("local")
    [(_, fields)] = await redis_client.xrange(stream, count=1)
    await redis_client.xadd(stream, fields)
    dead = await wait_until(lambda: redis_client.xrange(redis_keys.dead), message="a dead letter")
    assert dead[0][1][b"reason"] == b"replayed"
    assert await store.job_events(job.job_id) == before
    assert len(effect_lines(effects)) == 1
    pending = await redis_client.xpending(stream, AGENTS_GROUP)
    assert pending["pending"] == 0


async def test_garbage_entries_are_dead_lettered_and_the_queue_keeps_flowing(
    installers, effects, ring, store, settings, start_agent, redis_client, redis_keys
):
    write_app(installers, "after", recording(effects))
    stream = redis_keys.jobs_stream("local")
    await redis_client.xadd(stream, {"hello": "world"})
    await redis_client.xadd(stream, {"envelope": b"\xff\xfe{", "sig": "x", "kid": "k1"})
    await redis_client.xadd(stream, {"envelope": '{"job_id":"../../x"}', "sig": "x", "kid": "k1"})
    await redis_client.xadd(
        stream,
        {
            "envelope": json.dumps({"job_id": "01HZZZZZZZZZZZZZZZZZZZZZZZ"}),
            "sig": "x",
            "kid": "k1",
        },
    )
    await start_agent(settings)
    job = await submit(store, ring, installers, "after")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"
    dead = await redis_client.xrange(redis_keys.dead)
    assert [fields[b"reason"] for _, fields in dead] == [
        b"malformed",
        b"malformed",
        b"malformed",
        b"unknown_job",
    ]
    assert (await redis_client.xpending(stream, AGENTS_GROUP))["pending"] == 0


async def test_an_entry_delivered_too_often_ends_the_job_as_poison(
    installers, effects, ring, store, tmp_path, start_agent, settings_for, redis_client, redis_keys
):
    write_app(installers, "poisoned", recording(effects))
    job = await submit(store, ring, installers, "poisoned")
    stream = redis_keys.jobs_stream("local")
    await redis_client.xgroup_create(stream, AGENTS_GROUP, id="0")
    [[_, [(entry_id, _)]]] = await redis_client.xreadgroup(AGENTS_GROUP, "ghost", {stream: ">"})
    for _ in range(5):  # each claim by a dying consumer counts a delivery
        await redis_client.xclaim(stream, AGENTS_GROUP, "ghost", 0, [entry_id])
    agent_settings = settings_for("agent-p", PROV_LEASE_S="1", PROV_MAX_DELIVERIES="5")
    await start_agent(agent_settings)
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "poison")
    assert not effects.exists()


async def test_a_queued_job_with_cancel_requested_is_cancelled_without_running(
    installers, effects, ring, store, settings, start_agent
):
    write_app(installers, "never", recording(effects))
    job = await submit(store, ring, installers, "never")
    await store.request_cancel(job.job_id)
    await start_agent(settings)
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "cancelled")
    assert not effects.exists()


async def test_the_agent_beats_its_heart_in_the_agents_hash(
    installers, ring, store, settings, start_agent, redis_client, redis_keys
):
    write_app(installers, "hello", "exit 0")
    running = await start_agent(settings)
    raw = await wait_until(
        lambda: redis_client.hget(redis_keys.agents, "agent-test"), message="a heartbeat"
    )
    beat = json.loads(raw)
    assert beat["apps"] == ["hello"]
    assert beat["target"] == "local"
    assert {"host", "pid", "version", "running", "last_seen"} <= set(beat)
    await running.stop()
    assert await redis_client.hget(redis_keys.agents, "agent-test") is None


async def test_a_secret_echoed_by_the_script_never_rests_in_clear_in_redis(
    installers, effects, ring, store, settings, start_agent, redis_client, namespace
):
    secret = "canary-Pa55word-7f3a9"
    script = (
        'echo "password is $ADMIN_PASSWORD"; echo "$ADMIN_PASSWORD" >&2\n'
        'printf %s "$ADMIN_PASSWORD" | base64\n'
        "python3 -c \"import os,urllib.parse as u;print(u.quote(os.environ['ADMIN_PASSWORD']))\""
    )
    write_app(
        installers,
        "secretive",
        script,
        inputs=[{"name": "admin_password", "type": "password", "required": True}],
    )
    await start_agent(settings)
    job = await submit(store, ring, installers, "secretive", {"admin_password": secret})
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"
    dump = await dump_namespace(redis_client, namespace)
    assert b"***" in dump  # the log lines are there, redacted
    for form in (secret, base64.b64encode(secret.encode()).decode(), "canary-Pa55word"):
        assert form.encode() not in dump, form


async def dump_namespace(client: aioredis.Redis, namespace: str) -> bytes:
    """Every byte of every value under the namespace, to search for secrets."""
    chunks: list[bytes] = []
    async for key in client.scan_iter(match=f"{namespace}:*"):
        kind = (await client.type(key)).decode()
        if kind == "stream":
            for _, fields in await client.xrange(key):
                chunks.extend(k + b"=" + v for k, v in fields.items())
        elif kind == "hash":
            chunks.extend(k + b"=" + v for k, v in (await client.hgetall(key)).items())
        elif kind == "zset":
            chunks.extend(m for m, _ in await client.zrange(key, 0, -1, withscores=True))
        elif kind == "string":
            chunks.append(await client.get(key) or b"")
    return b"\n".join(chunks)


async def test_a_hanging_verify_fails_the_job_but_spares_the_service_the_install_started(
    installers, effects, ring, store, settings, start_agent, tmp_path
):
    pid_file = tmp_path / "service.pid"
    script = f"setsid sleep 300 >/dev/null 2>&1 < /dev/null &\necho $! > {pid_file}\n" + recording(
        effects
    )
    write_app(installers, "served", script, timeout=2, verify="sleep 300")
    await start_agent(settings)
    job = await submit(store, ring, installers, "served")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=30)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "verify_failed")
    service_pid = int(pid_file.read_text())
    try:
        assert _alive(service_pid), "the verify sweep killed the service"
    finally:
        import os
        import signal

        os.kill(service_pid, signal.SIGKILL)


async def test_an_agent_that_lost_its_lease_stops_its_run_and_records_nothing(
    installers, effects, ring, store, settings, start_agent, redis_client, redis_keys
):
    write_app(installers, "long", recording(effects, "sleep 300"))
    await start_agent(settings)
    job = await submit(store, ring, installers, "long")
    await wait_for_state(store, job.job_id, "running")
    await wait_until(effects.exists, message="the script started")
    pid = int(effect_lines(effects)[0][2])
    # Another agent reclaims the entry, as if we had been cut off past the lease.
    stream = redis_keys.jobs_stream("local")
    entry_id = (await store.snapshot(job.job_id))["entry_id"]
    await redis_client.xclaim(stream, AGENTS_GROUP, "agent-other", 0, [entry_id])
    await wait_until(lambda: not _alive(pid), timeout_s=15, message="the run was stopped")
    await asyncio.sleep(1)  # give a wrong outcome write every chance to happen
    snapshot = await store.snapshot(job.job_id)
    assert snapshot["state"] == "running"  # left to the agent that owns the entry now
    assert (await triggers(store, job.job_id))[-1] == "start"


async def test_due_retries_of_a_target_without_agents_never_hide_ours(
    installers, effects, ring, store, settings, start_agent, redis_keys
):
    for n in range(120):
        job_id = f"01J{n:023d}"
        await store.create_job(
            job_id, actor="panel:x", detail={"app_id": "x", "target": "elsewhere"}
        )
        for trigger in ("verify", "validate", "start"):
            await store.transition(job_id, trigger, actor="agent:x", attempt=1)
        await store.transition(
            job_id,
            "retry",
            actor="agent:x",
            detail={"next_retry_at": 1},
            effects=[ScheduleRetry(redis_keys.retry, n, job_id)],
        )
    write_app(
        installers,
        "flaky",
        recording(effects, '[ "$PROV_ATTEMPT" -ge 2 ] || exit 2'),
        retry=FAST_RETRY,
    )
    await start_agent(settings)
    job = await submit(store, ring, installers, "flaky")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"


async def test_a_job_no_agent_took_before_its_envelope_expired_fails_as_expired(
    installers, effects, ring, store, settings, start_agent
):
    import time

    write_app(installers, "late", recording(effects))
    job = await submit(
        store, ring, installers, "late", target="nobody", ttl_s=60, now_s=int(time.time()) - 120
    )
    await start_agent(settings)
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "expired")
    assert not effects.exists()


async def test_a_password_sent_unsealed_is_refused(
    installers, effects, ring, store, settings, start_agent
):
    write_app(
        installers,
        "secretive",
        recording(effects),
        inputs=[{"name": "admin_password", "type": "password"}],
    )
    envelope = envelope_for(installers, "secretive", ring, inputs={"admin_password": "in-clear-1"})
    job_id = await forge(store, ring, envelope)
    await start_agent(settings)
    snapshot = await wait_for_state(store, job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "invalid_inputs")
    assert not effects.exists()


async def test_the_agent_stops_promptly_even_after_its_event_loop_was_blocked(
    settings, start_agent
):
    import time

    running = await start_agent(settings)
    await asyncio.sleep(1)
    # A blocked loop makes the periodic duties' Redis calls time out together; a cancel
    # landing inside one used to be swallowed and left run() waiting forever.
    time.sleep(5)  # noqa: ASYNC251 - blocking the loop is the point of this test
    started = time.monotonic()
    await running.stop()
    assert time.monotonic() - started < 10


async def test_a_free_app_is_verified_validated_and_started_in_one_atomic_step(
    installers, effects, ring, store, settings, start_agent, monkeypatch
):
    chains: list[list[str]] = []
    real_prepare = EventStore.prepare

    async def counting_prepare(self, job_id, steps, **kwargs):  # type: ignore[no-untyped-def]
        chains.append([step.trigger for step in steps])
        return await real_prepare(self, job_id, steps, **kwargs)

    monkeypatch.setattr(EventStore, "prepare", counting_prepare)
    write_app(installers, "hello", recording(effects))
    await start_agent(settings)
    job = await submit(store, ring, installers, "hello")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"
    assert chains == [["verify", "validate", "start"], ["succeed"]]
    events = await store.job_events(job.job_id)
    assert [e.trigger for e in events] == ["submit", "verify", "validate", "start", "succeed"]
    assert events[3].detail["entry_id"] == snapshot["entry_id"]
    replayed = await replay_job(store, ring, job.job_id)
    assert replayed.intact and snapshot_drift(replayed, snapshot) == []


async def test_a_cancel_landing_just_before_the_atomic_start_cancels_the_job_unrun(
    installers, effects, ring, store, settings, start_agent, monkeypatch
):
    """The race the one-step start must lose: its single check sees the cancel request."""

    async def cancel(store: EventStore, job_id: str) -> None:
        await store.request_cancel(job_id)  # the panel's cancel, just before

    run_before_step(monkeypatch, "start", cancel)
    write_app(installers, "never", recording(effects))
    await start_agent(settings)
    job = await submit(store, ring, installers, "never")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert (snapshot["state"], snapshot["reason"]) == ("failed", "cancelled")
    assert await triggers(store, job.job_id) == ["submit", "cancel"]
    assert not effects.exists()
    await wait_until(
        lambda: _nothing_pending(store), message="the entry acknowledged with the cancel"
    )


def run_before_step(
    monkeypatch: pytest.MonkeyPatch,
    trigger: str,
    action: Callable[[EventStore, str], Awaitable[None]],
) -> None:
    """Make `action(store, job_id)` happen right before a step ending in `trigger` is sent:
    another actor's move landing between the agent's read and its atomic step."""
    real_apply = EventStore.apply

    async def apply_after_action(self, prepared):  # type: ignore[no-untyped-def]
        if prepared.applied.event.trigger == trigger:
            await action(self, prepared.job_id)
        return await real_apply(self, prepared)

    monkeypatch.setattr(EventStore, "apply", apply_after_action)


async def _nothing_pending(store: EventStore) -> bool:
    pending = await store.client.xpending(store.keys.jobs_stream("local"), AGENTS_GROUP)
    return int(pending["pending"]) == 0


async def test_the_last_log_lines_are_written_with_the_outcome_byte_for_byte(
    installers, ring, store, settings, start_agent, redis_client, redis_keys, monkeypatch
):
    # Astral characters (a surrogate pair in JSON), accents, a tab, a NUL-free control byte:
    # everything the atomic step's JSON carries must come out as the script printed it.
    printed = ["héllo wörld", "smile \U0001f600 ok", "tab\there", "bell\x07", ""]
    script = "\n".join(f"printf '%s\\n' {shlex.quote(line)}" for line in printed)
    write_app(installers, "talk", script + "\necho err >&2")

    async def no_plain_close(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the last lines must go with the outcome, not on their own")

    monkeypatch.setattr(JobLogWriter, "close", no_plain_close)
    await start_agent(settings)
    job = await submit(store, ring, installers, "talk")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "succeeded"
    log = await redis_client.xrange(redis_keys.job_log(job.job_id))
    stdout = [f[b"line"].decode() for _, f in log if f[b"stream"] == b"stdout"]
    assert stdout == printed
    assert [f[b"line"] for _, f in log if f[b"stream"] == b"stderr"] == [b"err"]
    assert {f[b"attempt"] for _, f in log} == {b"1"}


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_no_more_installers_run_at_once_than_the_concurrency(
    installers, tmp_path, ring, store, start_agent, settings_for, concurrency
):
    """A slot is free again when an installer exits, before its outcome is written: the
    next job may start meanwhile, but never one installer more than the concurrency."""
    running, counts = tmp_path / "running", tmp_path / "counts"
    running.mkdir()
    script = (
        f'touch {running}/"$PROV_JOB_ID"; ls {running} | wc -l >> {counts}\n'
        f'sleep 0.2; rm {running}/"$PROV_JOB_ID"'
    )
    apps = [f"app{number}" for number in range(6)]
    for app in apps:
        write_app(installers, app, script)
    agent_settings = settings_for("agent-slots", PROV_AGENT_CONCURRENCY=str(concurrency))
    jobs = [await submit(store, ring, installers, app) for app in apps]
    await start_agent(agent_settings)
    for job in jobs:
        assert (await wait_for_state(store, job.job_id, TERMINAL))["state"] == "succeeded"
    seen = [int(line) for line in counts.read_text().split()]
    assert len(seen) == len(apps)
    assert max(seen) == concurrency


@pytest.mark.parametrize("lost", ["start", "succeed"])
async def test_a_step_whose_answer_is_lost_is_recognised_as_written_once(
    installers,
    effects,
    ring,
    store,
    settings,
    start_agent,
    redis_client,
    redis_keys,
    monkeypatch,
    lost,
):
    """The write lands, its answer does not: the resend carries the same events, so the
    store sees its own write. Before, a rebuilt event conflicted: the job sat `running`
    unrun until its lease lapsed, or its last log lines were written twice."""
    real_apply = EventStore.apply
    dropped: list[str] = []

    async def lose_first_answer(self, prepared):  # type: ignore[no-untyped-def]
        applied = await real_apply(self, prepared)
        if prepared.applied.event.trigger == lost and not dropped:
            dropped.append(lost)
            raise RedisConnectionError("answer lost after the write")
        return applied

    monkeypatch.setattr(EventStore, "apply", lose_first_answer)
    write_app(installers, "once", recording(effects, "echo one; echo two"))
    await start_agent(settings)
    job = await submit(store, ring, installers, "once")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=10)
    assert dropped == [lost]
    assert snapshot["state"] == "succeeded"
    assert await triggers(store, job.job_id) == ["submit", "verify", "validate", "start", "succeed"]
    assert len(effect_lines(effects)) == 1
    log = await redis_client.xrange(redis_keys.job_log(job.job_id))
    assert [f[b"line"] for _, f in log] == [b"one", b"two"]
    await wait_until(lambda: _nothing_pending(store), message="the entry acknowledged")


async def test_a_job_ended_by_another_actor_before_the_atomic_start_is_acknowledged_unrun(
    installers, effects, ring, store, settings, start_agent, monkeypatch
):
    async def end_it(store: EventStore, job_id: str) -> None:
        await store.transition(job_id, "cancel", actor="panel:bob")

    run_before_step(monkeypatch, "start", end_it)
    write_app(installers, "never", recording(effects))
    await start_agent(settings)
    job = await submit(store, ring, installers, "never")
    snapshot = await wait_for_state(store, job.job_id, TERMINAL)
    assert snapshot["state"] == "failed"
    assert await triggers(store, job.job_id) == ["submit", "cancel"]
    assert not effects.exists()
    await wait_until(lambda: _nothing_pending(store), message="the entry acknowledged")


async def test_a_slot_is_free_again_before_the_outcome_is_written(
    installers, tmp_path, ring, store, start_agent, settings_for, monkeypatch
):
    """Concurrency 1: the first outcome's write waits until the second installer runs,
    which it can only do if the first job gave its slot back when its installer exited."""
    second_ran = tmp_path / "second-ran"
    gate = asyncio.Event()
    real_finish = JobProcessor._finish

    async def finish_after_the_next_start(self, job_id, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not gate.is_set():
            await wait_until(second_ran.exists, message="the next job started meanwhile")
            gate.set()
        return await real_finish(self, job_id, *args, **kwargs)

    monkeypatch.setattr(JobProcessor, "_finish", finish_after_the_next_start)
    write_app(installers, "first", "exit 0")
    write_app(installers, "second", f"touch {second_ran}")
    agent_settings = settings_for("agent-one-slot", PROV_AGENT_CONCURRENCY="1")
    first = await submit(store, ring, installers, "first")
    second = await submit(store, ring, installers, "second")
    await start_agent(agent_settings)
    for job in (first, second):
        assert (await wait_for_state(store, job.job_id, TERMINAL))["state"] == "succeeded"


async def test_a_stop_during_the_read_takes_nothing_more(
    installers, effects, ring, store, settings, start_agent, monkeypatch
):
    running_agents: list[RunningAgent] = []
    real_read = JobQueue.read_new_entries

    async def stop_while_reading(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        entries = await real_read(self, *args, **kwargs)
        if entries:
            running_agents[0].agent.stop()  # SIGTERM lands while the read is in flight
        return entries

    monkeypatch.setattr(JobQueue, "read_new_entries", stop_while_reading)
    write_app(installers, "late", recording(effects))
    job = await submit(store, ring, installers, "late")
    running_agents.append(await start_agent(settings))
    await asyncio.wait_for(running_agents[0].task, timeout=10)
    assert not effects.exists()
    assert (await store.snapshot(job.job_id) or {}).get("state") == "queued"
    pending = await store.client.xpending(store.keys.jobs_stream("local"), AGENTS_GROUP)
    assert int(pending["pending"]) == 1  # ours, resumed by our next life or reclaimed


async def test_a_snapshot_read_with_an_entry_is_used_only_for_the_job_the_entry_names(
    installers, effects, ring, store, settings, redis_client, redis_keys
):
    """The read script picks a snapshot by the job id it finds in the unverified entry; the
    agent reads the id itself and ignores a snapshot of any other job (an entry with two
    `envelope` fields, say, where the script and the agent would pick different ones)."""
    write_app(installers, "hello", recording(effects))
    job = await submit(store, ring, installers, "hello")
    other = await submit(store, ring, installers, "hello")
    # Ended: taken for the entry's own job, it would make the agent drop the entry unrun.
    await store.transition(other.job_id, "cancel", actor="panel:bob")
    other_before = await store.snapshot(other.job_id)
    assert other_before is not None
    entries = await redis_client.xrange(redis_keys.jobs_stream("local"))
    entry_id, fields = next(
        (entry_id.decode(), fields)
        for entry_id, fields in entries
        if job.job_id.encode() in fields[b"envelope"]
    )
    await redis_client.xgroup_create(redis_keys.jobs_stream("local"), AGENTS_GROUP, id="0")
    await redis_client.xreadgroup(
        AGENTS_GROUP, "agent-test", {redis_keys.jobs_stream("local"): ">"}
    )
    processor = JobProcessor(redis_client, store, lambda: ring, settings)
    await processor.process(entry_id, fields, deliveries=1, snapshot=other_before)
    done = await store.snapshot(job.job_id)
    assert done is not None and done["state"] == "succeeded"
    assert await triggers(store, job.job_id) == ["submit", "verify", "validate", "start", "succeed"]
    assert await store.snapshot(other.job_id) == other_before  # untouched
    assert await triggers(store, other.job_id) == ["submit", "cancel"]


async def test_an_agent_whose_duty_keeps_failing_stops_loudly_naming_it(
    settings, redis_url, ring, monkeypatch
):
    monkeypatch.setattr(worker_module, "HEARTBEAT_S", 0.01)
    client = aioredis.from_url(redis_url, socket_timeout=10)
    try:
        agent = Agent(settings, client, lambda: ring)

        async def broken_heartbeat() -> None:
            raise KeyError("a bug in the heartbeat")

        monkeypatch.setattr(agent, "_heartbeat", broken_heartbeat)
        with pytest.raises(DutyFailed, match="heartbeat duty kept failing: KeyError"):
            await asyncio.wait_for(agent.run(), timeout=30)
    finally:
        await client.aclose()
