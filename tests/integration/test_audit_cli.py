"""`provision audit replay|verify` against a real Redis, as an auditor runs them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from core.keyring import KeyRing
from statemachine.store import EventStore, IndexJob
from tests.agent_support import make_ring

pytestmark = pytest.mark.redis

PATHS = {
    "ok": [("verify", {}), ("validate", {}), ("start", {}), ("succeed", {"exit_code": 0})],
    "retried": [
        ("verify", {}),
        ("validate", {}),
        ("start", {}),
        ("retry", {"exit_code": 2, "delay_s": 1, "next_retry_at": 1, "reason": "install_error"}),
        ("start", {}),
        ("succeed", {"exit_code": 0}),
    ],
    "cancelled": [("verify", {}), ("cancel", {"reason": "cancelled"})],
}


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    return make_ring(tmp_path / "hmac.keys")


@pytest.fixture
def store(redis_client, redis_keys, ring) -> EventStore:
    return EventStore(redis_client, redis_keys, ring)


async def make_jobs(store: EventStore) -> dict[str, str]:
    ids = {}
    for n, (kind, path) in enumerate(PATHS.items()):
        job_id = f"01J{n:023d}"
        await store.create_job(
            job_id,
            actor="panel:alice",
            detail={"app_id": "hello", "target": "local", "requested_by": "alice"},
            effects=[IndexJob(store.keys.jobs_index, 1_000 + n, job_id)],
        )
        attempt = 0
        for trigger, detail in path:
            attempt += trigger == "start"
            await store.transition(job_id, trigger, actor="agent:a", attempt=attempt, detail=detail)
        ids[kind] = job_id
    return ids


async def audit(tmp_path, redis_url, namespace, *args):
    env = {
        "PATH": "/usr/bin:/bin",
        "PROV_REDIS_URL": redis_url,
        "PROV_NAMESPACE": namespace,
        "PROV_HMAC_KEYS_FILE": str(tmp_path / "hmac.keys"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "core",
        "audit",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    return process.returncode, out.decode(), err.decode()


async def test_replay_rebuilds_every_job_from_its_events(tmp_path, redis_url, namespace, store):
    ids = await make_jobs(store)
    code, out, err = await audit(tmp_path, redis_url, namespace, "replay", "--json")
    assert code == 0, err
    rows = {row["job_id"]: row for row in map(json.loads, out.splitlines())}
    assert rows[ids["ok"]]["state"] == "succeeded"
    assert (rows[ids["retried"]]["state"], rows[ids["retried"]]["attempts"]) == ("succeeded", 2)
    assert (rows[ids["cancelled"]]["state"], rows[ids["cancelled"]]["reason"]) == (
        "failed",
        "cancelled",
    )
    assert {row["requested_by"] for row in rows.values()} == {"alice"}
    code, out, _ = await audit(tmp_path, redis_url, namespace, "replay", "--job", ids["ok"])
    assert code == 0
    assert ids["ok"] in out and "succeeded" in out


async def test_verify_passes_an_untouched_history(tmp_path, redis_url, namespace, store):
    await make_jobs(store)
    code, _out, err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 0, err
    assert "3 job(s) checked: every record holds" in err + _out


@pytest.mark.parametrize(
    "tampering",
    ["edit_snapshot", "delete_job_event", "delete_global_event", "insert_forged_event"],
)
async def test_verify_names_the_job_and_the_problem_for_each_kind_of_tampering(
    tmp_path, redis_url, namespace, store, redis_client, tampering
):
    ids = await make_jobs(store)
    victim = ids["retried"]
    keys = store.keys
    entries = await redis_client.xrange(keys.job_events(victim))
    if tampering == "edit_snapshot":
        await redis_client.hset(keys.job(victim), "state", "failed")
        expected = "snapshot drift"
    elif tampering == "delete_job_event":
        await redis_client.xdel(keys.job_events(victim), entries[2][0])
        expected = "broken chain"
    elif tampering == "delete_global_event":
        event_id = entries[1][1][b"event_id"]
        for stream_id, fields in await redis_client.xrange(keys.events):
            if fields[b"event_id"] == event_id:
                await redis_client.xdel(keys.events, stream_id)
        expected = "not in the global stream"
    else:
        forged = dict(entries[-1][1])
        forged[b"detail"] = b'{"exit_code":0,"note":"forged"}'
        await redis_client.xadd(keys.job_events(victim), forged)
        expected = "hash does not match"
    code, out, _err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith("job ")]
    assert lines and all(victim in line for line in lines), out
    assert any(expected in line for line in lines), out
