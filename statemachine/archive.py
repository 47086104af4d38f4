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

A crash between steps leaves a state `provision audit verify` accepts: the archive record
before any trimming, a pointer beside a stream not yet deleted, a global stream not yet
trimmed. Job output logs (`prov:job:<id>:log`) are not events and are not archived or deleted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ulid import ULID

from core.errors import ProvisionError
from core.keyring import KeyRing
from statemachine.archive_record import ArchiveRecord, load_archive_records, save_archive_record
from statemachine.audit import ARCHIVED_TO, CHECK_BATCH
from statemachine.export import export_events, verify_export
from statemachine.history import PassedJob
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


def _next_id(stream_id: str) -> str:
    milliseconds, sequence = stream_id.split("-")
    return f"{milliseconds}-{int(sequence) + 1}"


async def archive_history(
    store: EventStore, ring: KeyRing, out: Path, *, before_ms: int
) -> ArchiveOutcome:
    """Export, verify, record, then trim the history older than `before_ms`."""
    client = store.client
    seconds, micros = await client.time()
    if before_ms > seconds * 1000 + micros // 1000:
        raise ArchiveRefused("the cut is in the future: only the past can be archived")
    archives = await load_archive_records(client, store.keys, ring)
    archive_id = str(ULID())
    exported = await export_events(
        store, ring, out, before_ms=before_ms, archive_id=archive_id, continues=bool(archives)
    )
    if not exported.events:
        os.unlink(exported.path)
        raise ArchiveRefused("no event is older than the cut: nothing to archive")

    finished: list[tuple[str, int]] = []
    # Jobs whose start is in an earlier archive: their own stream is checked whole below.
    continued: list[tuple[str, str]] = []

    def collect(job: PassedJob) -> None:
        replayed = job.replayed
        if replayed.state not in TERMINAL_STATES or replayed.problems:
            return
        if job.anchored:
            continued.append((job.job_id, job.digests[-1][0]))
        else:
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
    for job_id, last_event_id in continued:
        whole = await replay_job(store, ring, job_id)
        if whole.intact and whole.snapshot.get("last_event_id") == last_event_id:
            finished.append((job_id, whole.event_count))
    archived = 0
    for first in range(0, len(finished), CHECK_BATCH):
        archived += await _archive_jobs(store, archive_id, finished[first : first + CHECK_BATCH])
    trimmed = int(
        await client.xtrim(store.keys.events, minid=_next_id(exported.last_id), approximate=False)
    )
    return ArchiveOutcome(record=record, jobs_archived=archived, events_trimmed=trimmed)


async def _archive_jobs(store: EventStore, archive_id: str, jobs: list[tuple[str, int]]) -> int:
    """Point each job at the archive and drop its stream, if the stream is what was exported."""
    keys = store.keys
    check = store.client.pipeline(transaction=False)
    for job_id, _count in jobs:
        check.xlen(keys.job_events(job_id))
        check.hget(keys.job(job_id), "state")
    answers = await check.execute()
    move = store.client.pipeline(transaction=True)
    moved = 0
    for index, (job_id, count) in enumerate(jobs):
        length, state = answers[2 * index], answers[2 * index + 1]
        state_text = state.decode() if isinstance(state, bytes) else state
        # A job whose stream holds more (or other) events than the file stays as it is.
        if int(length) != count or state_text not in TERMINAL_STATES:
            continue
        move.hset(keys.job(job_id), ARCHIVED_TO, archive_id)
        move.delete(keys.job_events(job_id))
        moved += 1
    if moved:
        await move.execute()
    return moved
