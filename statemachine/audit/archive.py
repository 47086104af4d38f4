"""`provision audit archive`: move old history out of Redis, never without a verified export.

Steps, each only after the one before succeeded:
1. export every entry of `prov:events` older than the cut to the archive file;
2. verify the file offline with the key ring (every event, chain, transition, the trailer);
   any problem stops here, the file stays for inspection and nothing is trimmed;
3. record the archive (signed) in `prov:audit:archives`;
4. for each job that ended (a terminal state) and whose own stream holds exactly the events
   of its chain in the file (or, for a chain an earlier archive started, whose own stream
   replays intact up to the file's last event of it): point its snapshot at the archive and
   delete its event stream, in one MULTI per batch;
5. trim `prov:events` up to the last entry the file holds (XTRIM MINID: entries written since
   the export are newer and stay).

The cut never passes an entry a consumer group of `prov:events` (a webhook forwarder, an
integration) has not read and acknowledged: the export stops before the oldest such entry.

A crash between steps leaves a state `provision audit verify` accepts: the archive record
before any trimming, a pointer beside a stream not yet deleted, a global stream not yet
trimmed. Job output logs (`prov:job:<id>:log`) are not events and are not archived or deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError
from ulid import ULID

from core.errors import ProvisionError
from core.keyring import KeyRing
from core.stream_ids import next_stream_id, stream_id_key
from core.text import as_text
from statemachine.audit.archive_record import (
    ArchiveRecord,
    archive_pointer,
    load_archive_records,
    save_archive_record,
)
from statemachine.audit.auditor import ARCHIVED_TO, CHECK_BATCH
from statemachine.audit.export import export_events, verify_export
from statemachine.audit.history import PassedJob
from statemachine.machine import TERMINAL_STATES
from statemachine.replay import replay_job
from statemachine.store import EventStore, now_ms


class ArchiveRefused(ProvisionError):
    """The archive was not made (or not trimmed): the message says why."""


@dataclass(frozen=True, slots=True)
class ArchiveOutcome:
    """What an archive run did."""

    record: ArchiveRecord
    jobs_archived: int
    events_trimmed: int


async def archive_history(
    store: EventStore, ring: KeyRing, out: Path, *, before_ms: int
) -> ArchiveOutcome:
    """Export, verify, record, then trim the history older than `before_ms`."""
    client = store.client
    seconds, micros = await client.time()
    if before_ms > seconds * 1000 + micros // 1000:
        raise ArchiveRefused("the cut is in the future: only the past can be archived")
    archives = await load_archive_records(client, store.keys, ring)
    forged = [record.problem for record in archives.values() if record.problem]
    if forged:
        raise ArchiveRefused("an archive record does not verify: " + "; ".join(forged))
    earlier_cut = max((record.before_ms for record in archives.values()), default=None)
    # Never trim what an integration has not received yet.
    needed = await oldest_needed_entry(client, store.keys.events)
    end = f"({before_ms}-0"
    if needed is not None and stream_id_key(needed) < (before_ms, 0):
        end = f"({needed}"
    archive_id = str(ULID())
    exported = await export_events(
        store,
        ring,
        out,
        end=end,
        before_ms=before_ms,
        archive_id=archive_id,
        continues=bool(archives),
        replace_existing=False,
    )
    if not exported.events:
        os.unlink(exported.path)
        raise ArchiveRefused(
            "no event is older than the cut"
            + (" that every integration group has received" if end != f"({before_ms}-0" else "")
            + ": nothing to archive"
        )

    finished: list[tuple[str, int]] = []
    # Jobs whose start is in an earlier archive: their own stream is checked whole below.
    continued: list[PassedJob] = []

    def collect(job: PassedJob) -> None:
        replayed = job.replayed
        if job.anchored:
            continued.append(job)
        elif replayed.state in TERMINAL_STATES and not replayed.problems:
            finished.append((job.job_id, replayed.event_count))

    verdict = verify_export(exported.path, ring, on_job=collect)
    if not verdict.ok:
        reasons = verdict.file_problems + [
            f"job {job.job_id}: {job.replayed.problems[0].problem}" for job in verdict.failing[:5]
        ]
        raise ArchiveRefused(
            f"the export {exported.path} does not verify, nothing was trimmed: "
            + "; ".join(reasons)
        )
    # A chain the file holds only from its middle must have its start in an earlier archive:
    # otherwise events went missing from the global stream, and trimming would lose them.
    counts: dict[str, int] = {}
    for job in continued:
        missing = await _missing_start(store, job, earlier_cut, exported.last_id)
        if missing:
            raise ArchiveRefused(
                f"job {job.job_id}: event {missing} is in its own stream but neither in the "
                "global stream nor in an earlier archive; nothing was trimmed "
                "(run provision audit verify)"
            )
        whole = await replay_job(store, ring, job.job_id)
        if (
            whole.intact
            and whole.state in TERMINAL_STATES
            and whole.snapshot.get("last_event_id") == job.digests[-1][0]
        ):
            counts[job.job_id] = whole.event_count
    record = ArchiveRecord(
        archive_id=archive_id,
        file=str(exported.path),
        sha256=exported.sha256,
        before_ms=before_ms,
        last_entry_id=exported.last_id,
        events=exported.events,
        jobs=exported.jobs,
        created_at=now_ms(),
    )
    await save_archive_record(client, store.keys, ring, record)
    finished.extend(counts.items())
    archived = 0
    for first in range(0, len(finished), CHECK_BATCH):
        archived += await _archive_jobs(
            store, ring, archive_id, finished[first : first + CHECK_BATCH]
        )
    cut = next_stream_id(exported.last_id)
    trimmed = int(await client.xtrim(store.keys.events, minid=cut, approximate=False))
    return ArchiveOutcome(record=record, jobs_archived=archived, events_trimmed=trimmed)


async def oldest_needed_entry(client: aioredis.Redis, key: str) -> str | None:
    """The oldest entry of `key` some consumer group has not acknowledged or not yet read."""
    try:
        groups: list[dict[str, Any]] = await client.xinfo_groups(key)
    except ResponseError:
        return None  # no stream yet
    needed: list[str] = []
    for group in groups:
        name = group["name"]
        last = as_text(group["last-delivered-id"])
        needed.append(next_stream_id(last))
        pending: dict[str, Any] = await client.xpending(key, name)
        if pending.get("pending"):
            needed.append(as_text(pending["min"]))
    return min(needed, key=stream_id_key) if needed else None


async def _missing_start(
    store: EventStore, job: PassedJob, earlier_cut: int | None, last_exported: str
) -> str | None:
    """An event of the job's own stream that should be in the file or an earlier archive
    and is in neither, or None.

    The file holds the global entries up to `last_exported`; what the job's own stream has
    before that and the file lacks must be older than an earlier archive's cut (the two
    copies of an event are written in one script, in the same millisecond).
    """
    in_file = {event_id for event_id, _digest in job.digests}
    limit = stream_id_key(last_exported)[0]
    async for stream_id, fields in store.iter_stream_entries(store.keys.job_events(job.job_id)):
        moment = stream_id_key(stream_id)[0]
        if moment > limit:
            break
        event_id = as_text(fields.get(b"event_id", fields.get("event_id", b"")))
        if event_id in in_file:
            continue
        if earlier_cut is None or moment > earlier_cut:
            return event_id or stream_id
    return None


async def _archive_jobs(
    store: EventStore, ring: KeyRing, archive_id: str, jobs: list[tuple[str, int]]
) -> int:
    """Point each job at the archive and drop its stream, if the stream is what was exported."""
    keys = store.keys
    check = store.client.pipeline(transaction=False)
    for job_id, _count in jobs:
        check.xlen(keys.job_events(job_id))
        check.hmget(keys.job(job_id), ["state", "last_hash"])
    answers = await check.execute()
    move = store.client.pipeline(transaction=True)
    moved = 0
    for index, (job_id, count) in enumerate(jobs):
        length = answers[2 * index]
        state, last_hash = (as_text(value or b"") for value in answers[2 * index + 1])
        # A job whose stream holds more (or other) events than the file stays as it is.
        if int(length) != count or state not in TERMINAL_STATES:
            continue
        pointer = archive_pointer(ring, archive_id, job_id, last_hash)
        move.hset(keys.job(job_id), ARCHIVED_TO, pointer)
        move.delete(keys.job_events(job_id))
        moved += 1
    if moved:
        await move.execute()
    return moved
