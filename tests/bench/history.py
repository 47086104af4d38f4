"""Synthetic history for benchmarks: well-formed, chained, MACed events of finished jobs.

Each job gets the five events of a successful run (submit, verify, validate, start, succeed),
built with the same `new_event` and `apply_event` the store uses, and written with pipelined
plain commands (the atomicity of the store's Lua step does not matter for a bulk load nobody
else is reading). The result replays and verifies cleanly, so it is a fair load for the
auditor and a realistic "long history" for the job path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
from ulid import ULID

from core.keyring import KeyRing
from core.keys import RedisKeys
from statemachine.events import Event, new_event
from statemachine.snapshot import apply_event

EVENTS_PER_JOB: Final = 5
_RUN: Final = (
    ("submit", "", "queued"),
    ("verify", "queued", "verified"),
    ("validate", "verified", "validated"),
    ("start", "validated", "running"),
    ("succeed", "running", "succeeded"),
)


def _detail(trigger: str, job_number: int, app_id: str) -> dict[str, object]:
    if trigger == "submit":
        return {
            "app_id": app_id,
            "app_version": "1.0.0",
            "target": "local",
            "requested_by": "bench",
            "inputs": {"port": 8080 + job_number % 100},
            "secret_fingerprints": {},
            "expires_at": 0,
        }
    if trigger in ("verify", "start"):
        return {"entry_id": f"{job_number}-0"}
    if trigger == "succeed":
        return {"exit_code": 0, "duration_s": 0.01}
    return {}


def _app_of(job_number: int, app_count: int, app_ids: Sequence[str]) -> str:
    if app_ids:
        return app_ids[job_number % len(app_ids)]
    return f"bench-app-{job_number % app_count}"


def job_events(
    ring: KeyRing, job_number: int, at_ms: int, app_count: int, app_ids: Sequence[str] = ()
) -> list[Event]:
    """The five chained events of one successful job."""
    job_id = str(ULID())
    events: list[Event] = []
    prev = ""
    for step, (trigger, src, dst) in enumerate(_RUN):
        event = new_event(
            ring,
            job_id=job_id,
            trigger=trigger,
            src=src,
            dst=dst,
            at=at_ms + step,
            actor="agent:bench" if step else "panel:bench",
            attempt=1 if step >= 3 else 0,
            detail=_detail(trigger, job_number, _app_of(job_number, app_count, app_ids)),
            prev=prev,
        )
        events.append(event)
        prev = event.hash
    return events


async def write_history(
    client: aioredis.Redis,
    keys: RedisKeys,
    ring: KeyRing,
    *,
    jobs: int,
    start_ms: int,
    app_count: int = 8,
    app_ids: Sequence[str] = (),
    spacing_ms: int = 1,
    batch_jobs: int = 500,
) -> int:
    """Write `jobs` finished jobs (five events each), `spacing_ms` apart, over `app_ids` (else
    `app_count` made-up apps); returns the number of events written."""
    written = 0
    for first in range(0, jobs, batch_jobs):
        pipe = client.pipeline(transaction=False)
        for number in range(first, min(first + batch_jobs, jobs)):
            at_ms = start_ms + number * spacing_ms
            events = job_events(ring, number, at_ms, app_count, app_ids)
            snapshot: dict[str, str] = {"cancel_requested": "0", "entry_id": ""}
            for event in events:
                fields = event.stream_fields()
                pipe.xadd(keys.job_events(event.job_id), fields)  # type: ignore[arg-type]
                pipe.xadd(keys.events, fields)  # type: ignore[arg-type]
                snapshot.update(apply_event(snapshot, event))
            job_id = events[0].job_id
            pipe.hset(keys.job(job_id), mapping=snapshot)  # type: ignore[arg-type]
            pipe.zadd(keys.jobs_index, {job_id: int(snapshot["created_at"])})
            written += len(events)
        await pipe.execute()
    return written
