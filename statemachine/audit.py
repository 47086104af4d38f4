"""Audit of the whole history: replay every job from its events and check what can be checked.

For each job (listed by `prov:jobs:index`): the per-job stream replayed through the machine
(illegal transitions, broken `prev` links, bad or unknown-key macs: `statemachine.replay`),
the stored snapshot against the replayed one (drift), and the per-job stream against the
global `prov:events` stream (the same events, in the same order: a missing or extra event in
either is reported). Everything is read in large batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final, cast

import redis.asyncio as aioredis

from core.errors import TamperError
from core.keyring import KeyRing
from statemachine.events import event_from_fields
from statemachine.replay import ReplayedJob, replay_job, snapshot_drift
from statemachine.store import EventStore

BATCH: Final = 5000


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@dataclass(slots=True)
class JobAudit:
    """One job's replay and every problem found with its record."""

    replayed: ReplayedJob
    snapshot: dict[str, str] | None
    problems: list[TamperError] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        """The job audited."""
        return self.replayed.job_id

    def summary(self) -> dict[str, Any]:
        """The job as the audit table shows it."""
        snapshot = self.replayed.snapshot
        created = int(snapshot.get("created_at", "0") or "0")
        updated = int(snapshot.get("updated_at", "0") or "0")
        return {
            "job_id": self.job_id,
            "app_id": snapshot.get("app_id", ""),
            "state": self.replayed.state,
            "attempts": int(snapshot.get("attempt", "0") or "0"),
            "reason": snapshot.get("reason") or None,
            "duration_s": round((updated - created) / 1000, 3) if created else None,
            "requested_by": snapshot.get("requested_by", ""),
            "created_at": created or None,
            "events": self.replayed.event_count,
            "intact": not self.problems,
            "problems": [
                {"event_id": problem.event_id, "problem": problem.problem}
                for problem in self.problems
            ],
        }


async def job_ids(
    client: aioredis.Redis, store: EventStore, *, since_ms: int | None = None
) -> AsyncIterator[str]:
    """Every job id of the index, oldest first (from `since_ms` when given)."""
    low: str = "-inf" if since_ms is None else str(since_ms)
    offset = 0
    while True:
        batch = cast(
            list[bytes],
            await client.zrangebyscore(store.keys.jobs_index, low, "+inf", start=offset, num=BATCH),
        )
        for job_id in batch:
            yield _text(job_id)
        if len(batch) < BATCH:
            return
        offset += len(batch)


async def global_event_order(store: EventStore) -> dict[str, list[str]]:
    """job id -> its event ids in the order of `prov:events`."""
    order: dict[str, list[str]] = defaultdict(list)
    async for stream_id, fields in store.iter_stream_entries(store.keys.events, BATCH):
        try:
            event = event_from_fields(fields, stream_id=stream_id)
        except TamperError as error:
            order[error.job_id].append(f"malformed:{stream_id}")
            continue
        order[event.job_id].append(event.event_id)
    return order


async def audit_job(
    store: EventStore,
    ring: KeyRing,
    job_id: str,
    global_order: dict[str, list[str]] | None,
) -> JobAudit:
    """Replay one job and collect every problem with its record."""
    replayed = await replay_job(store, ring, job_id)
    snapshot = await store.snapshot(job_id)
    audit = JobAudit(replayed=replayed, snapshot=snapshot)
    audit.problems.extend(replayed.problems)
    audit.problems.extend(snapshot_drift(replayed, snapshot))
    if global_order is not None:
        own = [event.event_id for event in await store.job_events(job_id)]
        seen = global_order.get(job_id, [])
        if own != seen:
            missing_globally = [event_id for event_id in own if event_id not in seen]
            missing_locally = [event_id for event_id in seen if event_id not in own]
            for event_id in missing_globally:
                audit.problems.append(
                    TamperError(job_id, event_id, "missing event: not in the global stream")
                )
            for event_id in missing_locally:
                audit.problems.append(
                    TamperError(job_id, event_id, "missing event: not in the job's stream")
                )
            if not missing_globally and not missing_locally:
                audit.problems.append(
                    TamperError(job_id, "", "the two event streams order the job differently")
                )
    return audit


async def audit_all(
    client: aioredis.Redis,
    store: EventStore,
    ring: KeyRing,
    *,
    only_job: str | None = None,
    since_ms: int | None = None,
    check_global: bool = True,
    on_job: Callable[[JobAudit], None] | None = None,
) -> list[JobAudit]:
    """Audit one job or every job; `on_job` sees each result as it comes."""
    order = await global_event_order(store) if check_global else None
    audits: list[JobAudit] = []

    async def chosen() -> AsyncIterator[str]:
        if only_job:
            yield only_job
        else:
            async for job_id in job_ids(client, store, since_ms=since_ms):
                yield job_id

    async for job_id in chosen():
        audits.append(await audit_job(store, ring, job_id, order))
        if on_job:
            on_job(audits[-1])
    return audits
