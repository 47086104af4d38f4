"""Audit of the whole history: replay every job from its events and check what can be checked.

The fast path reads the global stream `prov:events` once, in large batches, replaying every
job as its events pass (`statemachine.audit.history`): illegal transitions, broken `prev` links, bad
or unknown-key macs. As jobs finish they are checked in batches of a hundred, one round
trip each: the stored snapshot against the replayed one (drift), and the job's own stream
against its global entries (both read raw, as lists of the stored bytes, and compared as such:
no digest is built on either side; one XREAD reads the batch's own streams, and one script
answer holds its snapshots).

A job whose two streams disagree, that the global stream does not hold (or holds only from
an archive's cut on), or that `--job` names, takes the slow path: its own stream is replayed
and compared event by event with the global entries, so every problem names its event.
"""

from __future__ import annotations

import asyncio
import gc
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Final, cast

import redis.asyncio as aioredis

from core.errors import TamperError
from core.keyring import KeyRing
from core.stream_ids import stream_id_key
from core.text import as_text_lenient
from statemachine.audit.archive_record import (
    ArchiveRecord,
    load_archive_records,
    pointer_archive_id,
    pointer_problem,
)
from statemachine.audit.compare import by_key, event_id_of, same_entries, stream_disagreement
from statemachine.audit.history import HistoryPass, PassedJob, entry_digest, job_share
from statemachine.audit.raw_reads import prefetched, raw_batches, raw_client, raw_entries
from statemachine.replay import ReplayedJob, replay_job, snapshot_drift
from statemachine.snapshot import JobSnapshot
from statemachine.store import EventStore

# Jobs per snapshot/digest round trip: large enough that round trips vanish next to the
# checking, small enough to keep replies modest.
CHECK_BATCH: Final = 100
CHECKS_IN_FLIGHT: Final = 3
# Entries of a job's own stream read in one go: a job with this many is compared on the slow
# path, which reads its stream in full.
OWN_ENTRIES_READ: Final = 1000

# Snapshot fields that point to the archive holding an archived job's events.
ARCHIVED_TO: Final = "archived_to"


@dataclass(slots=True)
class JobAudit:
    """One job's replay and every problem found with its record."""

    replayed: ReplayedJob
    snapshot: dict[str, str] | None
    problems: list[TamperError] = field(default_factory=list)
    # A second record of a job already counted (events after it had ended).
    extra: bool = False

    @property
    def job_id(self) -> str:
        """The job audited."""
        return self.replayed.job_id

    @property
    def archived_to(self) -> str:
        """The id of the archive holding the job's events when they left Redis, else ""."""
        pointer = (self.snapshot or {}).get(ARCHIVED_TO, "")
        return pointer_archive_id(pointer) if pointer else ""

    def summary(self) -> dict[str, Any]:
        """The job as the audit table shows it."""
        # An archived job has no events left in Redis: its row comes from the snapshot,
        # which the archive step checked against the events before they left.
        job = JobSnapshot(
            self.replayed.snapshot if self.replayed.event_count else (self.snapshot or {})
        )
        created, updated = job.created_at or 0, job.updated_at or 0
        return {
            "job_id": self.job_id,
            "app_id": job.app_id,
            "state": self.replayed.state or job.state,
            "attempts": job.attempt,
            "reason": job.fields.get("reason") or None,
            "duration_s": round((updated - created) / 1000, 3) if created else None,
            "requested_by": job.requested_by,
            "created_at": created or None,
            "events": self.replayed.event_count,
            "archived_to": self.archived_to or None,
            "intact": not self.problems,
            "problems": [
                {"event_id": problem.event_id, "problem": problem.problem}
                for problem in self.problems
            ],
        }


@dataclass(slots=True)
class AuditSummary:
    """What a whole-history audit found: counts, and the rows of the jobs that failed."""

    jobs: int = 0
    events: int = 0
    archived: int = 0
    failing: list[dict[str, Any]] = field(default_factory=list)

    def count(self, audit: JobAudit) -> None:
        """Add one audited job to the totals."""
        if not audit.extra:
            self.jobs += 1
            self.archived += bool(audit.archived_to)
        self.events += audit.replayed.event_count
        if audit.problems:
            self.failing.append(audit.summary())

    def merge(self, other: AuditSummary) -> None:
        """Add another (partial) audit's totals to these."""
        self.jobs += other.jobs
        self.events += other.events
        self.archived += other.archived
        self.failing.extend(other.failing)


async def job_ids(
    client: aioredis.Redis, store: EventStore, *, since_ms: int | None = None
) -> AsyncIterator[str]:
    """Every job id of the index, oldest first (from `since_ms` when given)."""
    key = store.keys.jobs_index
    # Paged by rank: a page costs Redis log(n) plus its length (paging by score with an
    # offset walks every entry before the page again, which on a long index is most of it).
    rank = 0 if since_ms is None else int(await client.zcount(key, "-inf", f"({since_ms}"))
    page = CHECK_BATCH * 10
    while True:
        batch = cast(list[bytes], await client.zrange(key, rank, rank + page - 1))
        for job_id in batch:
            yield as_text_lenient(job_id)
        if len(batch) < page:
            return
        rank += len(batch)


def _lua(name: str) -> str:
    return files("statemachine").joinpath("lua", name).read_text(encoding="utf-8")


def _decoded(mapping: dict[bytes | str, bytes | str]) -> dict[str, str]:
    try:
        return {key.decode(): value.decode() for key, value in mapping.items()}  # type: ignore[union-attr]
    except (AttributeError, UnicodeDecodeError):
        return {as_text_lenient(key): as_text_lenient(value) for key, value in mapping.items()}


def _snapshot_of(flat: list[bytes | str]) -> dict[str, str] | None:
    """A snapshot hash from its flat field/value list (None when the hash does not exist)."""
    if not flat:
        return None
    try:
        # The usual answer: UTF-8 bytes, decoded in C.
        return dict(
            zip(map(bytes.decode, flat[0::2]), map(bytes.decode, flat[1::2]), strict=False)  # type: ignore[arg-type]
        )
    except (TypeError, UnicodeDecodeError):
        return _decoded(dict(zip(flat[0::2], flat[1::2], strict=False)))


async def global_entries(store: EventStore, ring: KeyRing, job_id: str) -> PassedJob:
    """One job's entries in the global stream, replayed (reads all of the stream)."""
    found: list[PassedJob] = []
    history = HistoryPass(ring, found.append, partial="anchor")
    needle = job_id.encode()
    async for batch in raw_batches(store.client, store.keys.events):
        for stream_id, flat in batch:
            if (
                needle in flat
                and dict(zip(flat[0::2], flat[1::2], strict=False)).get(b"job_id") == needle
            ):
                history.add(stream_id, flat)
    history.finish()
    if not found:
        return PassedJob(replayed=ReplayedJob(job_id))
    first = found[0]
    for later in found[1:]:
        first.digests.extend(later.digests)
        first.replayed.problems.extend(later.replayed.problems)
        first.last_stream_id = later.last_stream_id
    return first


class _Checker:
    """Checks finished jobs against Redis in batches and hands each result on."""

    def __init__(
        self,
        store: EventStore,
        ring: KeyRing,
        archives: Mapping[str, ArchiveRecord],
        *,
        check_streams: bool,
        on_job: Callable[[JobAudit], None],
    ) -> None:
        self._store = store
        self._ring = ring
        self._archives = archives
        self._check_streams = check_streams
        self._on_job = on_job
        self._waiting: list[PassedJob] = []
        # Where the read of the global stream was (ms of its last entry read): own events
        # written later are not missing from it, only not read yet.
        self.read_until_ms: int | None = None
        # XREAD answers left as hiredis gives them: the lists compared with the global ones.
        self._raw = raw_client(store.client)
        self._snapshots = store.client.register_script(_lua("job_snapshots.lua"))

    def add(self, passed: PassedJob) -> None:
        """Queue a job the pass finished; `flush` checks the queue."""
        self._waiting.append(passed)

    @property
    def full(self) -> bool:
        """Whether enough jobs wait for one batch."""
        return len(self._waiting) >= CHECK_BATCH

    async def flush(self) -> None:
        """Check every waiting job: one round trip for the batch, more only for a bad job."""
        batch, self._waiting = self._waiting, []
        late = [passed for passed in batch if passed.late]
        batch = [passed for passed in batch if not passed.late]
        for passed in late:
            self._on_job(
                JobAudit(passed.replayed, None, list(passed.replayed.problems), extra=True)
            )
        if not batch:
            return
        keys = self._store.keys
        # Two answers for the whole batch: every snapshot (one script), every own stream
        # (one XREAD over all of them); a reply costs the client far more than Redis.
        pipe = self._raw.pipeline(transaction=False)
        await self._snapshots(keys=[keys.job(passed.job_id) for passed in batch], client=pipe)
        if self._check_streams:
            pipe.xread(
                {keys.job_events(passed.job_id): "0-0" for passed in batch}, count=OWN_ENTRIES_READ
            )
        answers = await pipe.execute()
        snapshots = cast(list[list[bytes | str]], answers[0])
        own_streams = by_key(answers[1]) if self._check_streams else {}
        for passed, flat_snapshot in zip(batch, snapshots, strict=True):
            snapshot = _snapshot_of(flat_snapshot)
            if self._check_streams:
                own = own_streams.get(keys.job_events(passed.job_id).encode(), [])
                if (
                    passed.anchored
                    or len(own) >= OWN_ENTRIES_READ
                    or not same_entries(own, passed.digests)
                ):
                    self._on_job(await self.slow(passed.job_id, snapshot, passed))
                    continue
            elif passed.anchored or (snapshot or {}).get(ARCHIVED_TO):
                self._on_job(await self.slow(passed.job_id, snapshot, passed))
                continue
            audit = JobAudit(replayed=passed.replayed, snapshot=snapshot)
            audit.problems.extend(passed.replayed.problems)
            audit.problems.extend(snapshot_drift(passed.replayed, snapshot))
            self._on_job(audit)

    @property
    def archive_cut_ms(self) -> int | None:
        """The newest cut of a trustworthy archive, or None without one."""
        cuts = [record.before_ms for record in self._archives.values() if not record.problem]
        return max(cuts) if cuts else None

    async def slow(
        self,
        job_id: str,
        snapshot: dict[str, str] | None,
        passed: PassedJob | None,
        *,
        from_index: bool = False,
    ) -> JobAudit:
        """Replay the job from its own stream and compare it with its global entries."""
        store = self._store
        replayed = await replay_job(store, self._ring, job_id)
        audit = JobAudit(replayed=replayed, snapshot=snapshot)
        pointer = (snapshot or {}).get(ARCHIVED_TO, "")
        if pointer and not replayed.event_count:
            self._check_archived(audit, pointer, passed)
            return audit
        if from_index and snapshot is None and not replayed.event_count:
            audit.problems.append(
                TamperError(job_id, "", "in the job index, but has neither a record nor events")
            )
            return audit
        audit.problems.extend(replayed.problems)
        audit.problems.extend(snapshot_drift(replayed, snapshot))
        if self._check_streams:
            own = [
                (stream_id, event_id_of(flat), entry_digest(flat))
                async for stream_id, flat in raw_entries(
                    store.client, store.keys.job_events(job_id)
                )
            ]
            audit.problems.extend(
                stream_disagreement(
                    job_id,
                    own,
                    passed.digests if passed is not None else [],
                    archive_cut_ms=self.archive_cut_ms,
                    read_until_ms=self.read_until_ms,
                )
            )
        return audit

    def _check_archived(self, audit: JobAudit, pointer: str, passed: PassedJob | None) -> None:
        """An archived job: its pointer must be the archive's own, made for this job."""
        snapshot = audit.snapshot or {}
        job_id = audit.job_id
        problem = pointer_problem(
            self._ring,
            pointer,
            job_id=job_id,
            last_hash=snapshot.get("last_hash", ""),
            archives=dict(self._archives),
        )
        if problem is not None:
            audit.problems.append(TamperError(job_id, "", problem))
        if passed is not None and passed.digests:
            # Its global entries are still there only if the archive stopped before trimming;
            # then they are all older than the archive's last entry, and still check out.
            audit.problems.extend(passed.replayed.problems)
            record = self._archives.get(pointer_archive_id(pointer))
            if record is None or stream_id_key(passed.last_stream_id) > stream_id_key(
                record.last_entry_id
            ):
                audit.problems.append(
                    TamperError(job_id, "", "global events written after the job was archived")
                )


async def audit_job(
    store: EventStore, ring: KeyRing, job_id: str, *, check_streams: bool = True
) -> JobAudit:
    """Audit one job on its own (reads the whole global stream to find its entries)."""
    archives = await load_archive_records(store.client, store.keys, ring)
    checker = _Checker(store, ring, archives, check_streams=check_streams, on_job=lambda _: None)
    newest = cast(list[tuple[bytes, Any]], await store.client.xrevrange(store.keys.events, count=1))
    checker.read_until_ms = stream_id_key(as_text_lenient(newest[0][0]))[0] if newest else 0
    passed = await global_entries(store, ring, job_id) if check_streams else None
    return await checker.slow(job_id, await store.snapshot(job_id), passed)


async def audit_all(
    store: EventStore,
    ring: KeyRing,
    *,
    only_job: str | None = None,
    since_ms: int | None = None,
    check_streams: bool = True,
    on_job: Callable[[JobAudit], None] | None = None,
    share: tuple[int, int] | None = None,
) -> AuditSummary:
    """Audit one job or every job; `on_job` sees each result as it comes.

    Without `since_ms` every job of the index is audited, including the ones the global
    stream misses; with it, the jobs submitted since then that the global stream holds.
    `share` (index, count) audits only the jobs `job_share` gives to `index`
    (`statemachine.audit.parallel` runs `count` of them side by side).
    """
    # The pass allocates millions of small objects that never form cycles: the cyclic
    # collector would walk the whole heap again and again for nothing (a third of the time
    # on a million events). It is switched back on, as it was, at the end.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return await _audit_all(
            store,
            ring,
            only_job=only_job,
            since_ms=since_ms,
            check_streams=check_streams,
            on_job=on_job,
            share=share,
        )
    finally:
        if collecting:
            gc.enable()


async def _audit_all(
    store: EventStore,
    ring: KeyRing,
    *,
    only_job: str | None,
    since_ms: int | None,
    check_streams: bool,
    on_job: Callable[[JobAudit], None] | None,
    share: tuple[int, int] | None,
) -> AuditSummary:
    if only_job:
        summary = AuditSummary()
        audit = await audit_job(store, ring, only_job, check_streams=check_streams)
        summary.count(audit)
        if on_job is not None:
            on_job(audit)
        return summary
    audit_pass = await HistoryAudit.open(
        store,
        ring,
        since_ms=since_ms,
        check_streams=check_streams,
        on_job=on_job,
        share=share,
        report_archives=share is None or share[0] == 0,
    )
    await audit_pass.read(start="-" if since_ms is None else f"{since_ms}-0")
    await audit_pass.settle()
    if since_ms is None:
        await audit_pass.check_index()
    return audit_pass.summary


class HistoryAudit:
    """One audit pass over the global stream, or over a span of it, checking jobs as they end.

    `read` the stream (or a span), `settle` (take the entries other passes set aside for
    jobs this one met first, and check the jobs still open), then `check_index` (the jobs of
    the index the global stream never mentioned). A split audit runs one per process
    (`statemachine.audit.parallel`); `audit_all` runs one over everything.
    """

    def __init__(
        self,
        store: EventStore,
        ring: KeyRing,
        archives: Mapping[str, ArchiveRecord],
        *,
        partial: str,
        check_streams: bool,
        on_job: Callable[[JobAudit], None] | None,
        share: tuple[int, int] | None = None,
        defer: bool = False,
    ) -> None:
        self.summary = AuditSummary()
        self._on_job = on_job
        self._store = store
        self._share = share
        self._checker = _Checker(
            store, ring, archives, check_streams=check_streams, on_job=self._count
        )
        self.history = HistoryPass(
            ring,
            self._checker.add,
            partial=partial,
            share=share,
            digests=check_streams,
            defer=defer,
        )
        # While Python checks one batch, Redis prepares the next read and the checks of the
        # jobs that finished before: a few checks in flight at a time keep memory bounded.
        self._in_flight: deque[asyncio.Task[None]] = deque()

    @classmethod
    async def open(
        cls,
        store: EventStore,
        ring: KeyRing,
        *,
        since_ms: int | None = None,
        check_streams: bool,
        on_job: Callable[[JobAudit], None] | None,
        share: tuple[int, int] | None = None,
        defer: bool = False,
        report_archives: bool = True,
    ) -> HistoryAudit:
        """A pass with the archive records loaded (their problems counted if `report_archives`)."""
        archives = await load_archive_records(store.client, store.keys, ring)
        partial = "skip" if since_ms is not None else ("anchor" if archives else "report")
        audit_pass = cls(
            store,
            ring,
            archives,
            partial=partial,
            check_streams=check_streams,
            on_job=on_job,
            share=share,
            defer=defer,
        )
        if report_archives:
            for problem in (record.problem for record in archives.values() if record.problem):
                audit_pass._count(
                    JobAudit(
                        ReplayedJob("(archive)"), None, [TamperError("(archive)", "", problem)]
                    )
                )
        return audit_pass

    def _count(self, audit: JobAudit) -> None:
        self.summary.count(audit)
        if self._on_job is not None:
            self._on_job(audit)

    @property
    def read_until_ms(self) -> int | None:
        """The time of the last entry read (own events written later are not missing)."""
        return self._checker.read_until_ms

    async def read(self, *, start: str = "-", end: str = "+") -> None:
        """Feed every entry from `start` to `end` to the pass, checking jobs as they finish."""
        store = self._store
        # Every process of a share-split audit reads the whole stream and checks its share: a
        # filter inside Redis (tried) blocks the server for all of them and is slower.
        async for batch in prefetched(
            raw_batches(store.client, store.keys.events, start=start, end=end)
        ):
            for stream_id, flat in batch:
                self.history.add(stream_id, flat)
            if batch:
                self._checker.read_until_ms = stream_id_key(batch[-1][0])[0]
            if self._checker.full:
                await self._launch()
            # Let the reader send the next request (and the checks their pipelines) now, so
            # Redis prepares them while this batch is checked.
            await asyncio.sleep(0)
        for task in self._in_flight:
            await task
        self._in_flight.clear()
        await self._checker.flush()

    async def _launch(self) -> None:
        if len(self._in_flight) >= CHECKS_IN_FLIGHT:
            await self._in_flight.popleft()
        self._in_flight.append(asyncio.create_task(self._checker.flush()))

    async def settle(
        self,
        taken: Iterable[tuple[str, Sequence[bytes]]] = (),
        *,
        read_until_ms: int | None = None,
    ) -> None:
        """Take entries set aside for jobs this pass met first, then check every job left."""
        if read_until_ms is not None:
            self._checker.read_until_ms = read_until_ms
        self.history.take(taken)
        self.history.finish()
        await self._checker.flush()

    async def check_index(
        self, seen_elsewhere: Collection[str] = (), *, share: tuple[int, int] | None = None
    ) -> None:
        """Check the jobs of the index (of this pass's share, or `share`) that no pass met in
        the stream: archived ones, or tampering."""
        seen = self.history.seen
        share = share or self._share
        store = self._store
        async for job_id in job_ids(store.client, store):
            if job_id in seen or job_id in seen_elsewhere:
                continue
            if share is not None and job_share(job_id.encode(), share[1]) != share[0]:
                continue
            self._count(
                await self._checker.slow(
                    job_id, await store.snapshot(job_id), None, from_index=True
                )
            )
