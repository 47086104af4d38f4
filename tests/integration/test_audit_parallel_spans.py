"""The audit split by spans of the global stream finds exactly what one pass finds.

Jobs here advance round-robin, one step each per round, every round in a later millisecond,
so each job's events are spread over the whole stream and every span boundary cuts through
every job: each later span meets them mid-chain, sets their entries aside and hands them to
the span that met them first.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.keyring import KeyRing
from statemachine.audit.archive import archive_history
from statemachine.audit.auditor import AuditSummary, audit_all
from statemachine.audit.parallel import audit_by_spans, audit_in_parallel, stream_spans
from statemachine.store import EventStore, IndexJob

pytestmark = pytest.mark.redis

WORKERS = 2
SPANS_PER_WORKER = 4
STEPS = [
    ("verify", {}),
    ("validate", {}),
    ("start", {}),
    ("retry", {"exit_code": 2, "delay_s": 1, "next_retry_at": 1, "reason": "install_error"}),
    ("start", {}),
    ("succeed", {"exit_code": 0}),
]


async def _next_millisecond(client: aioredis.Redis) -> None:
    """Return once Redis's clock has passed the millisecond it showed on entry."""
    seconds, micros = await client.time()
    now = seconds * 1000 + micros // 1000
    while True:
        seconds, micros = await client.time()
        if seconds * 1000 + micros // 1000 > now:
            return


async def _job(store: EventStore, job_id: str, number: int) -> None:
    await store.create_job(
        job_id,
        actor="panel:alice",
        detail={"app_id": "hello", "target": "local", "requested_by": "alice"},
        effects=[IndexJob(store.keys.jobs_index, 1_000 + number, job_id)],
    )


async def interleaved_history(store: EventStore, *, jobs: int = 10) -> list[str]:
    """An early job run to its end, then `jobs` jobs advancing round-robin over many ms."""
    early = f"01JEARLY{0:018d}"
    await _job(store, early, 0)
    for trigger, detail in STEPS:
        await store.transition(early, trigger, actor="agent:a", detail=detail)
    ids = [f"01JROUND{number:018d}" for number in range(jobs)]
    for number, job_id in enumerate(ids):
        await _next_millisecond(store.client)
        await _job(store, job_id, number + 1)
    for trigger, detail in STEPS:
        for job_id in ids:
            await _next_millisecond(store.client)
            await store.transition(job_id, trigger, actor="agent:a", detail=detail)
    return [early, *ids]


def _found(summary: AuditSummary) -> dict[str, Any]:
    failing = sorted(
        (row["job_id"], [problem["problem"] for problem in row["problems"]])
        for row in summary.failing
    )
    return {
        "jobs": summary.jobs,
        "events": summary.events,
        "archived": summary.archived,
        "failing": failing,
    }


async def _both_ways(
    store: EventStore, ring: KeyRing, redis_url: str, namespace: str
) -> tuple[dict[str, Any], AuditSummary | None, dict[str, Any]]:
    """One pass; the span split alone (None if it gave up); the CLI's parallel audit."""
    one_pass = _found(await audit_all(store, ring, check_streams=True))
    spans = await asyncio.to_thread(stream_spans, redis_url, namespace, WORKERS * SPANS_PER_WORKER)
    assert len(spans) == WORKERS * SPANS_PER_WORKER
    by_spans = await asyncio.to_thread(
        audit_by_spans, redis_url, namespace, ring, spans, workers=WORKERS, check_streams=True
    )
    parallel = await asyncio.to_thread(
        audit_in_parallel,
        redis_url,
        namespace,
        ring,
        workers=WORKERS,
        spans_per_worker=SPANS_PER_WORKER,
    )
    return one_pass, by_spans, _found(parallel)


async def _global_entries(client: aioredis.Redis, store: EventStore, job_id: str) -> list[Any]:
    entries = await client.xrange(store.keys.events)
    return [(sid, fields) for sid, fields in entries if fields[b"job_id"] == job_id.encode()]


@pytest.mark.timeout(180)
async def test_jobs_cut_by_every_span_boundary_verify_as_in_one_pass(
    store, ring, redis_url, namespace
):
    ids = await interleaved_history(store)
    one_pass, by_spans, parallel = await _both_ways(store, ring, redis_url, namespace)
    assert one_pass == {"jobs": len(ids), "events": 7 * len(ids), "archived": 0, "failing": []}
    assert by_spans is not None and _found(by_spans) == one_pass
    assert parallel == one_pass


@pytest.mark.timeout(180)
async def test_a_worker_left_without_a_span_still_checks_its_share_of_the_index(
    store, ring, redis_url, namespace, redis_client
):
    await interleaved_history(store)
    # Jobs of the index the stream never mentioned: whichever worker's share each is in must
    # name it, even the one that got no span to read.
    orphans = [f"01JORPHAN{number:017d}" for number in range(8)]
    for number, job_id in enumerate(orphans):
        await redis_client.zadd(store.keys.jobs_index, {job_id: 9_000 + number})
    one_pass = _found(await audit_all(store, ring, check_streams=True))
    one_span = await asyncio.to_thread(
        audit_by_spans, redis_url, namespace, ring, [("-", "+")], workers=2, check_streams=True
    )
    assert one_span is not None and _found(one_span) == one_pass
    failing = dict(one_pass["failing"])
    for job_id in orphans:
        assert failing[job_id] == ["in the job index, but has neither a record nor events"]


async def _copy_a_last_event_to_the_end(redis_client, store, ids: list[str]) -> str:
    # A copy of the early job's last event, at the end of the stream: a later span meets it
    # mid-chain and hands it to the first span, which knows the job had ended.
    early = ids[0]
    _sid, last = (await _global_entries(redis_client, store, early))[-1]
    await redis_client.xadd(store.keys.events, last)
    return early


async def _delete_a_start(redis_client, store, ids: list[str]) -> str:
    victim = ids[-1]
    submit_id, _fields = (await _global_entries(redis_client, store, victim))[0]
    await redis_client.xdel(store.keys.events, submit_id)
    return victim


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (_copy_a_last_event_to_the_end, "event after the job ended (succeeded)"),
        (_delete_a_start, "missing event: not in the global stream"),
    ],
    ids=["event-after-the-end", "start-gone"],
)
async def test_a_tampered_job_is_named_by_the_span_split_as_in_one_pass(
    store, ring, redis_url, namespace, redis_client, tamper, problem
):
    ids = await interleaved_history(store)
    job_id = await tamper(redis_client, store, ids)
    one_pass, by_spans, parallel = await _both_ways(store, ring, redis_url, namespace)
    assert by_spans is not None and _found(by_spans) == one_pass
    assert parallel == one_pass
    assert problem in dict(one_pass["failing"])[job_id]


@pytest.mark.timeout(180)
async def test_a_job_replayed_whole_in_a_later_span_falls_back_to_the_exact_split(
    store, ring, redis_url, namespace, redis_client
):
    early, *_ = await interleaved_history(store)
    # The early job's whole history again at the end: a later span would take it for a new
    # job, so the span split gives up and the split by share reports it as one pass does.
    for _sid, fields in await _global_entries(redis_client, store, early):
        await redis_client.xadd(store.keys.events, fields)
    one_pass, by_spans, parallel = await _both_ways(store, ring, redis_url, namespace)
    assert by_spans is None
    assert parallel == one_pass
    assert "event after the job ended (succeeded)" in dict(one_pass["failing"])[early]


@pytest.mark.timeout(180)
async def test_after_an_archive_the_span_split_finds_what_one_pass_finds(
    store, ring, redis_url, namespace, redis_client, tmp_path
):
    ids = await interleaved_history(store)
    entries = await redis_client.xrange(store.keys.events)
    middle = int(entries[len(entries) // 2][0].split(b"-")[0])
    # The early job goes to the archive whole; the others keep their later events only, so
    # every span meets them mid-chain, anchored at the archive's cut.
    await archive_history(store, ring, tmp_path / "archive.jsonl", before_ms=middle)
    one_pass, by_spans, parallel = await _both_ways(store, ring, redis_url, namespace)
    remaining = await redis_client.xlen(store.keys.events)
    assert 0 < remaining < len(entries)
    # Jobs anchored at the cut are checked against their own streams, which are whole.
    assert (one_pass["jobs"], one_pass["archived"], one_pass["failing"]) == (len(ids), 1, [])
    assert by_spans is not None and _found(by_spans) == one_pass
    assert parallel == one_pass
