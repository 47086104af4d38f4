"""`provision audit replay|verify` against a real Redis, as an auditor runs them."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace

import pytest

from core.keyring import KeyRing, append_new_key, load_keyring
from statemachine.events import compute_hash, compute_mac, event_from_fields
from statemachine.store import EventStore, IndexJob
from tests.keyring_fixtures import ring_of

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
    assert "3 job(s), 15 event(s) checked in Redis: every record holds" in err + _out


async def _rewrite(redis_client, key: str, entries: list) -> None:
    """Replace a stream by `entries` (id, fields), in that order, with fresh ids."""
    await redis_client.delete(key)
    for _stream_id, fields in entries:
        await redis_client.xadd(key, fields)


def _forge(fields: dict, ring: KeyRing, **changes: str) -> dict:
    """An entry with `changes`, re-hashed and re-MACed under `ring` (a key holder's forgery)."""
    event = event_from_fields(fields)
    changed = replace(event, **changes)
    changed = replace(changed, hash=compute_hash(changed))
    changed = replace(changed, mac=compute_mac(ring, changed.kid, changed.hash))
    return changed.stream_fields()


async def _both_streams(redis_client, keys, victim):
    own = await redis_client.xrange(keys.job_events(victim))
    everything = await redis_client.xrange(keys.events)
    return own, everything


def _positions(everything, victim):
    return [
        i for i, (_sid, fields) in enumerate(everything) if fields[b"job_id"] == victim.encode()
    ]


@pytest.mark.parametrize(
    ("tampering", "expected"),
    [
        ("edit_snapshot", "snapshot drift"),
        ("delete_job_event", "broken chain"),
        ("delete_global_event", "not in the global stream"),
        ("delete_event_everywhere", "broken chain"),
        ("insert_forged_event", "hash does not match"),
        ("insert_forged_event_everywhere", "hash does not match"),
        ("alter_field_in_job_stream", "hash does not match"),
        ("alter_field_everywhere", "hash does not match"),
        ("alter_field_in_global_stream", "differ on this event"),
        ("reorder_pair_in_job_stream", "broken chain"),
        ("reorder_pair_everywhere", "broken chain"),
        ("unknown_key_everywhere", "unknown key"),
        ("drop_last_event_everywhere", "snapshot drift"),
    ],
)
async def test_verify_names_the_job_and_the_problem_for_each_kind_of_tampering(
    tmp_path, redis_url, namespace, store, redis_client, ring, tampering, expected
):
    ids = await make_jobs(store)
    victim = ids["retried"]
    keys = store.keys
    own, everything = await _both_streams(redis_client, keys, victim)
    mine = _positions(everything, victim)
    if tampering == "edit_snapshot":
        await redis_client.hset(keys.job(victim), "state", "failed")
    elif tampering == "delete_job_event":
        await redis_client.xdel(keys.job_events(victim), own[2][0])
    elif tampering == "delete_global_event":
        await redis_client.xdel(keys.events, everything[mine[1]][0])
    elif tampering == "delete_event_everywhere":
        await redis_client.xdel(keys.job_events(victim), own[2][0])
        await redis_client.xdel(keys.events, everything[mine[2]][0])
    elif tampering in ("insert_forged_event", "insert_forged_event_everywhere"):
        forged = dict(own[-1][1])
        forged[b"detail"] = b'{"exit_code":0,"note":"forged"}'
        await redis_client.xadd(keys.job_events(victim), forged)
        if tampering.endswith("everywhere"):
            await redis_client.xadd(keys.events, forged)
    elif tampering.startswith("alter_field"):
        altered = dict(own[3][1])
        altered[b"actor"] = b"panel:mallory"
        if tampering != "alter_field_in_global_stream":
            own[3] = (own[3][0], altered)
            await _rewrite(redis_client, keys.job_events(victim), own)
        if tampering != "alter_field_in_job_stream":
            everything[mine[3]] = (everything[mine[3]][0], altered)
            await _rewrite(redis_client, keys.events, everything)
    elif tampering.startswith("reorder_pair"):
        own[2], own[3] = own[3], own[2]
        await _rewrite(redis_client, keys.job_events(victim), own)
        if tampering.endswith("everywhere"):
            a, b = mine[2], mine[3]
            everything[a], everything[b] = everything[b], everything[a]
            await _rewrite(redis_client, keys.events, everything)
    elif tampering == "unknown_key_everywhere":
        outsider = ring_of("outsider")
        forged = _forge(own[-1][1], outsider, kid="outsider")
        await redis_client.xadd(keys.job_events(victim), forged)
        await redis_client.xadd(keys.events, forged)
    elif tampering == "drop_last_event_everywhere":
        await redis_client.xdel(keys.job_events(victim), own[-1][0])
        await redis_client.xdel(keys.events, everything[mine[-1]][0])
    code, out, _err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.startswith("job ")]
    assert lines and all(victim in line for line in lines), out
    assert any(expected in line for line in lines), out
    code, out, _err = await audit(tmp_path, redis_url, namespace, "verify", "--job", victim)
    assert code == 1 and expected in out, out
    code, out, _err = await audit(tmp_path, redis_url, namespace, "verify", "--job", ids["ok"])
    assert code == 0, out


async def test_verify_of_an_unknown_job_says_so(tmp_path, redis_url, namespace, store):
    await make_jobs(store)
    code, _out, err = await audit(tmp_path, redis_url, namespace, "verify", "--job", "01JNOPE")
    assert code == 1 and "no job 01JNOPE" in err


async def test_verify_follows_key_rotation(tmp_path, redis_url, namespace, store, ring):
    await make_jobs(store)
    # A new key signs from now on; events MACed with the old one still verify.
    append_new_key(tmp_path / "hmac.keys")
    rotated = EventStore(store.client, store.keys, load_keyring(tmp_path / "hmac.keys"))
    await make_more(rotated)
    code, out, err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 0, out + err
    kids = {fields[b"kid"] for _sid, fields in await store.client.xrange(store.keys.events)}
    assert len(kids) == 2


async def make_more(store: EventStore) -> None:
    job_id = "01K" + "9" * 23
    await store.create_job(
        job_id,
        actor="panel:bob",
        detail={"app_id": "hello", "target": "local", "requested_by": "bob"},
        effects=[IndexJob(store.keys.jobs_index, 5_000, job_id)],
    )
    await store.transition(job_id, "verify", actor="agent:a")


async def test_an_audit_split_over_processes_finds_what_one_process_finds(
    tmp_path, redis_url, namespace, store, redis_client
):
    ids = await make_jobs(store)
    for number in range(20):
        await make_more_numbered(store, number)
    victim = ids["retried"]
    await redis_client.hset(store.keys.job(victim), "attempt", "7")
    outputs = {}
    for workers in ("1", "3"):
        code, out, err = await audit(
            tmp_path, redis_url, namespace, "verify", "--json", "--workers", workers
        )
        assert code == 1, err
        outputs[workers] = json.loads(out)
    assert outputs["1"] == outputs["3"]
    assert outputs["3"]["jobs"] == 23 and outputs["3"]["problems"][0]["job_id"] == victim
    rows = {}
    for workers in ("1", "3"):
        code, out, err = await audit(
            tmp_path, redis_url, namespace, "replay", "--json", "--workers", workers
        )
        assert code == 0, err
        rows[workers] = sorted(out.splitlines())
    assert rows["1"] == rows["3"] and len(rows["3"]) == 23


async def make_more_numbered(store: EventStore, number: int) -> None:
    job_id = f"01K{number:023d}"
    await store.create_job(
        job_id,
        actor="panel:bob",
        detail={"app_id": "hello", "target": "local", "requested_by": "bob"},
        effects=[IndexJob(store.keys.jobs_index, 2_000 + number, job_id)],
    )
    await store.transition(job_id, "cancel", actor="panel:bob", detail={"reason": "cancelled"})


@pytest.mark.parametrize(
    "hostile",
    ["huge_integer", "deep_detail", "not_utf8", "smuggled_separator", "bad_snapshot_number"],
)
async def test_hostile_records_are_reported_never_crash_the_audit(
    tmp_path, redis_url, namespace, store, redis_client, hostile
):
    ids = await make_jobs(store)
    victim = ids["ok"]
    keys = store.keys
    own = await redis_client.xrange(keys.job_events(victim))
    fields = dict(own[1][1])
    if hostile == "huge_integer":
        fields[b"at"] = b"9" * 5000
    elif hostile == "deep_detail":
        fields[b"detail"] = b"[" * 100_000 + b"]" * 100_000
    elif hostile == "not_utf8":
        fields[b"actor"] = b"agent:\xff\xfe"
    elif hostile == "smuggled_separator":
        # Two fields folded into one value: the digests must still tell the copies apart.
        fields.pop(b"attempt")
        fields[b"actor"] = b"agent:a\x1eattempt\x1e0"
    if hostile == "bad_snapshot_number":
        await redis_client.hset(keys.job(victim), mapping={"created_at": "x", "attempt": "1e9"})
    else:
        own[1] = (own[1][0], fields)
        await _rewrite(redis_client, keys.job_events(victim), own)
    for command in (["verify"], ["verify", "--job", victim], ["replay", "--json"]):
        code, out, err = await audit(tmp_path, redis_url, namespace, *command)
        assert "Traceback" not in err, err
        assert code == (0 if command[0] == "replay" else 1), out + err
        assert victim in out


async def test_an_event_after_the_end_is_named_and_the_job_counted_once(
    tmp_path, redis_url, namespace, store, redis_client, ring
):
    ids = await make_jobs(store)
    victim = ids["ok"]
    own = await redis_client.xrange(store.keys.job_events(victim))
    late = _forge(own[-1][1], ring, event_id="01JLATE0000000000000000000")
    await redis_client.xadd(store.keys.job_events(victim), late)
    await redis_client.xadd(store.keys.events, late)
    code, out, _err = await audit(tmp_path, redis_url, namespace, "verify", "--json")
    verdict = json.loads(out)
    assert code == 1 and verdict["jobs"] == 3
    problems = {(p["job_id"], p["problem"]) for p in verdict["problems"]}
    assert (victim, "event after the job ended (succeeded)") in problems
