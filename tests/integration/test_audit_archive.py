"""`provision audit export|verify --file|archive`: history an auditor takes away, and retention."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from statemachine.audit.export import export_events
from statemachine.store import EventStore, IndexJob
from tests.agent_support import make_ring
from tests.integration.test_audit_cli import audit

pytestmark = pytest.mark.redis

SUCCESS = [("verify", {}), ("validate", {}), ("start", {}), ("succeed", {"exit_code": 0})]


async def new_job(store: EventStore, number: int, path=SUCCESS) -> str:
    job_id = f"01J{number:023d}"
    await store.create_job(
        job_id,
        actor="panel:alice",
        detail={"app_id": "hello", "target": "local", "requested_by": "alice"},
        effects=[IndexJob(store.keys.jobs_index, 1_000 + number, job_id)],
    )
    for trigger, detail in path:
        await store.transition(
            job_id,
            trigger,
            actor="agent:a",
            attempt=1 if trigger in ("start", "succeed") else 0,
            detail=detail,
        )
    return job_id


async def redis_now_ms(store: EventStore) -> int:
    seconds, micros = await store.client.time()
    await asyncio.sleep(0.005)  # later events get later stream ids
    return seconds * 1000 + micros // 1000 + 1


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_export_verifies_offline_with_the_key_ring_alone(
    tmp_path, redis_url, namespace, store
):
    for number in range(4):
        await new_job(store, number)
    out = tmp_path / "events.jsonl"
    code, stdout, err = await audit(tmp_path, redis_url, namespace, "export", "--out", str(out))
    assert code == 0, err
    assert "exported 20 event(s) of 4 job(s)" in stdout
    assert out.stat().st_mode & 0o777 == 0o600
    header, *entries, trailer = lines_of(out)
    assert header["format"] == "provision-events" and header["namespace"] == namespace
    assert len(entries) == 20 and trailer["events"] == 20 and trailer["end"] is True
    # Offline: no Redis at all, only the key ring.
    code, stdout, err = await audit(
        tmp_path, "redis://127.0.0.1:1", namespace, "verify", "--file", str(out)
    )
    assert code == 0, stdout + err
    assert "4 job(s), 20 event(s) checked" in err + stdout


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("alter_event", "hash does not match"),
        ("drop_middle_event", "broken chain"),
        ("drop_last_event", "does not match its trailer"),
        ("truncate", "no trailer"),
        ("forge_trailer", "trailer: bad signature"),
    ],
)
async def test_a_damaged_export_fails_offline_verification(
    tmp_path, redis_url, namespace, store, damage, expected
):
    for number in range(3):
        await new_job(store, number)
    out = tmp_path / "events.jsonl"
    await audit(tmp_path, redis_url, namespace, "export", "--out", str(out))
    lines = out.read_text().splitlines()
    if damage == "alter_event":
        entry = json.loads(lines[3])
        entry["fields"][entry["fields"].index("actor") + 1] = "agent:mallory"
        lines[3] = json.dumps(entry)
    elif damage == "drop_middle_event":
        del lines[3]
    elif damage == "drop_last_event":
        del lines[-2]
    elif damage == "truncate":
        del lines[-1]
    else:
        trailer = json.loads(lines[-1])
        trailer["events"] = 99
        trailer["mac"] = "0" * 64
        lines[-1] = json.dumps(trailer)
    out.write_text("\n".join(lines) + "\n")
    code, stdout, _err = await audit(tmp_path, redis_url, namespace, "verify", "--file", str(out))
    assert code == 1
    assert expected in stdout, stdout


async def test_export_since_holds_the_later_events_and_still_verifies(
    tmp_path, redis_url, namespace, store
):
    first = await new_job(store, 1, SUCCESS[:2])  # straddles the cut
    cut = await redis_now_ms(store)
    for trigger, detail in SUCCESS[2:]:
        await store.transition(first, trigger, actor="agent:a", attempt=1, detail=detail)
    await new_job(store, 2)
    out = tmp_path / "since.jsonl"
    code, stdout, err = await audit(
        tmp_path, redis_url, namespace, "export", "--since", str(cut), "--out", str(out)
    )
    assert code == 0, err
    assert "exported 7 event(s) of 2 job(s)" in stdout
    code, stdout, err = await audit(tmp_path, redis_url, namespace, "verify", "--file", str(out))
    assert code == 0, stdout + err


async def test_archive_exports_verifies_then_trims_and_what_remains_verifies(
    tmp_path, redis_url, namespace, store, redis_client
):
    keys = store.keys
    old = [await new_job(store, number) for number in range(3)]
    straddling = await new_job(store, 10, SUCCESS[:1])
    cut = await redis_now_ms(store)
    await store.transition(straddling, "validate", actor="agent:a")
    recent = await new_job(store, 20)
    before = await redis_client.xlen(keys.events)

    archive_file = tmp_path / "archive-1.jsonl"
    code, stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", str(cut), "--out", str(archive_file)
    )
    assert code == 0, err
    assert "3 finished job(s) moved out" in stdout, stdout
    # 3 finished jobs x 5 events + the straddling job's first 2 left the global stream.
    assert await redis_client.xlen(keys.events) == before - 17
    for job_id in old:
        assert not await redis_client.exists(keys.job_events(job_id))
        snapshot = await store.snapshot(job_id)
        assert snapshot is not None and snapshot["archived_to"] and snapshot["state"] == "succeeded"
    assert await redis_client.xlen(keys.job_events(straddling)) == 3
    assert await redis_client.xlen(keys.job_events(recent)) == 5

    code, stdout, err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 0, stdout + err
    assert "5 job(s)" in err + stdout and "3 archived" in err + stdout
    code, stdout, err = await audit(
        tmp_path, redis_url, namespace, "verify", "--file", str(archive_file)
    )
    assert code == 0, stdout + err
    code, stdout, _err = await audit(tmp_path, redis_url, namespace, "replay", "--json")
    rows = {row["job_id"]: row for row in map(json.loads, stdout.splitlines())}
    assert rows[old[0]]["state"] == "succeeded" and rows[old[0]]["archived_to"]
    assert rows[straddling]["state"] == "validated" and rows[recent]["state"] == "succeeded"

    # A second archive continues where the first stopped, and everything still verifies.
    await store.transition(straddling, "fail", actor="agent:a", detail={"reason": "timeout"})
    second_cut = await redis_now_ms(store)
    second = tmp_path / "archive-2.jsonl"
    code, stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", str(second_cut), "--out", str(second)
    )
    assert code == 0, err
    assert "2 finished job(s) moved out" in stdout, stdout
    assert await redis_client.xlen(keys.events) == 0
    code, stdout, err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 0, stdout + err
    code, stdout, err = await audit(tmp_path, redis_url, namespace, "verify", "--file", str(second))
    assert code == 0, stdout + err


async def test_archive_never_trims_a_history_that_does_not_verify(
    tmp_path, redis_url, namespace, store, redis_client
):
    keys = store.keys
    victim = await new_job(store, 1)
    await new_job(store, 2)
    cut = await redis_now_ms(store)
    entries = await redis_client.xrange(keys.events)
    await redis_client.xdel(keys.events, entries[2][0])
    before = await redis_client.xlen(keys.events)
    out = tmp_path / "archive.jsonl"
    code, _stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", str(cut), "--out", str(out)
    )
    assert code == 1
    assert "does not verify, nothing was trimmed" in err and victim in err
    assert await redis_client.xlen(keys.events) == before
    assert await redis_client.xlen(keys.job_events(victim)) == 5
    assert not await redis_client.exists(keys.audit_archives)


async def test_archive_refuses_a_cut_in_the_future_and_an_existing_file(
    tmp_path, redis_url, namespace, store
):
    await new_job(store, 1)
    future = str((await redis_now_ms(store)) + 3_600_000)
    out = tmp_path / "archive.jsonl"
    code, _stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", future, "--out", str(out)
    )
    assert code == 1 and "future" in err
    assert not out.exists()
    out.write_text("keep me")
    code, _stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", "2020-01-01", "--out", str(out)
    )
    assert code == 2 and "never overwrites" in err
    assert out.read_text() == "keep me"


async def _archived_world(tmp_path, redis_url, namespace, store):
    """Two finished jobs archived, then one more job after the cut."""
    old = [await new_job(store, number) for number in range(2)]
    cut = await redis_now_ms(store)
    recent = await new_job(store, 20)
    archive_file = tmp_path / "archive.jsonl"
    code, _stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", str(cut), "--out", str(archive_file)
    )
    assert code == 0, err
    return old, recent, cut


async def test_an_archive_pointer_cannot_be_invented_or_moved_to_another_job(
    tmp_path, redis_url, namespace, store, redis_client
):
    old, recent, _cut = await _archived_world(tmp_path, redis_url, namespace, store)
    pointer = (await store.snapshot(old[0]))["archived_to"]
    # Behind the system's back: a recent job's events deleted and the archived job's valid
    # pointer copied onto it, so that it would look archived.
    await redis_client.delete(store.keys.job_events(recent))
    await redis_client.hset(store.keys.job(recent), "archived_to", pointer)
    code, stdout, _err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 1
    assert f"job {recent}" in stdout and "archive pointer: bad signature" in stdout, stdout
    # And one invented from nothing.
    await redis_client.hset(store.keys.job(recent), "archived_to", "01JFAKEARCHIVE")
    code, stdout, _err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 1 and "an unknown archive" in stdout, stdout


async def test_after_an_archive_events_deleted_from_the_global_stream_are_still_caught(
    tmp_path, redis_url, namespace, store, redis_client
):
    _old, recent, _cut = await _archived_world(tmp_path, redis_url, namespace, store)
    for stream_id, fields in await redis_client.xrange(store.keys.events):
        if fields[b"job_id"] == recent.encode():
            await redis_client.xdel(store.keys.events, stream_id)
    code, stdout, _err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 1
    assert f"job {recent}" in stdout and "not in the global stream" in stdout, stdout


async def test_archive_refuses_when_a_chain_lost_its_start_from_the_global_stream(
    tmp_path, redis_url, namespace, store, redis_client
):
    await _archived_world(tmp_path, redis_url, namespace, store)
    victim = await new_job(store, 30)
    # Its first two events vanish from the global stream only; a second archive must not
    # take the rest and delete the job's own stream, the only copy of those two.
    deleted = 0
    for stream_id, fields in await redis_client.xrange(store.keys.events):
        if fields[b"job_id"] == victim.encode() and deleted < 2:
            await redis_client.xdel(store.keys.events, stream_id)
            deleted += 1
    cut = await redis_now_ms(store)
    out = tmp_path / "archive-2.jsonl"
    code, _stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", str(cut), "--out", str(out)
    )
    assert code == 1, err
    assert f"job {victim}" in err and "nothing was trimmed" in err
    assert await redis_client.xlen(store.keys.job_events(victim)) == 5


async def test_archive_never_trims_what_an_integration_group_has_not_received(
    tmp_path, redis_url, namespace, store, redis_client
):
    keys = store.keys
    first = await new_job(store, 1)
    second = await new_job(store, 2)
    # A webhook's group that has read and acknowledged only the first job's events.
    await redis_client.xgroup_create(keys.events, "hooks", id="0")
    entries = await redis_client.xreadgroup("hooks", "h1", {keys.events: ">"}, count=5)
    await redis_client.xack(keys.events, "hooks", *[sid for sid, _f in entries[0][1]])
    # ... and one more it has read but not acknowledged.
    await redis_client.xreadgroup("hooks", "h1", {keys.events: ">"}, count=1)
    cut = await redis_now_ms(store)
    out = tmp_path / "archive.jsonl"
    code, stdout, err = await audit(
        tmp_path, redis_url, namespace, "archive", "--before", str(cut), "--out", str(out)
    )
    assert code == 0, err
    assert "5 event(s) of 1 job(s)" in stdout and "1 finished job(s) moved out" in stdout
    assert await redis_client.xlen(keys.events) == 5
    assert not await redis_client.exists(keys.job_events(first))
    assert await redis_client.xlen(keys.job_events(second)) == 5
    code, stdout, err = await audit(tmp_path, redis_url, namespace, "verify")
    assert code == 0, stdout + err


async def test_an_export_never_replaces_a_file_when_asked_not_to(tmp_path, store):
    await new_job(store, 1)
    out = tmp_path / "kept.jsonl"
    out.write_text("keep me")
    with pytest.raises(FileExistsError):
        await export_events(store, make_ring(tmp_path / "other.keys"), out, replace_existing=False)
    assert out.read_text() == "keep me"
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".kept")] == []
