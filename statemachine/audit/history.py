"""One pass over a history in global order, replaying every job as its events go by.

The global stream `prov:events` (or an export of it) holds every event of every job in the
order they were written. Reading it once, in large batches, and keeping only the jobs still
open in memory, is what lets an audit check millions of events quickly: each event is parsed,
hashed, MAC-checked and walked through the machine exactly once, and a job leaves memory as
soon as its terminal event has passed.

For each entry the pass also keeps its raw fields (`PassedJob.digests`), so the caller can
compare each job's own stream with the global copy, as Redis stores both, in one round trip
per batch of jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from core.errors import TamperError
from core.keyring import KeyRing
from statemachine.events import Event, parse_flat_event
from statemachine.machine import NO_STATE, TERMINAL_STATES
from statemachine.replay import JobReplayer, ReplayedJob


def entry_digest(flat: Sequence[bytes]) -> list[bytes]:
    """The comparable form of one raw stream entry: its field names and values, as stored.

    Two copies of an event are the same when their field lists are equal: a plain list
    comparison, done in C, with nothing built or hashed on either side.
    """
    return list(flat)


# What a pass without digests keeps of an entry: nothing (one shared empty list).
_NO_FIELDS: Final[list[bytes]] = []


def _job_id_of(flat: Sequence[bytes]) -> bytes:
    # The store writes `job_id` third; look further only for an entry written otherwise.
    if len(flat) > 5 and flat[4] == b"job_id":
        return flat[5]
    for position in range(0, len(flat) - 1, 2):
        if flat[position] == b"job_id":
            return flat[position + 1]
    return b""


def job_share(job_id: bytes, count: int) -> int:
    """Which of `count` parallel passes checks this job: its id's last byte modulo `count`.

    The last character of a ULID is random, so shares come out even.
    """
    return (job_id[-1] if job_id else 0) % count


@dataclass(slots=True)
class PassedJob:
    """A job replayed from the global order, with the digests of its global entries."""

    replayed: ReplayedJob
    # (event id, raw fields) of each of the job's entries, in global order (the fields are
    # left empty by a pass without digests).
    digests: list[tuple[str, list[bytes]]] = field(default_factory=list)
    # The global stream id of the job's last entry in the pass.
    last_stream_id: str = ""
    # A record opened by events that came after the job had ended (its first record was
    # handed out already): it carries the problem, and is not a job of its own.
    late: bool = False

    @property
    def job_id(self) -> str:
        """The job replayed."""
        return self.replayed.job_id

    @property
    def anchored(self) -> bool:
        """True when the pass met the job mid-chain (its start is archived or not exported)."""
        return bool(self.replayed.anchored_at)


@dataclass(slots=True)
class _OpenJob:
    replayer: JobReplayer
    digests: list[tuple[str, list[bytes]]]
    last_stream_id: str = ""
    late: bool = False


class HistoryPass:
    """Feed entries in global order with `add`; every job comes out through `on_job`.

    A job whose first entry in the pass is not its `submit` is, by `partial`:
    - "report": replayed from nothing, so the missing start shows as problems (a full
      history must start every job);
    - "anchor": replayed from that entry on (the start is in an archive, or before an
      export's `--since`);
    - "skip": left out (replay `--since`: the job was submitted before the window).

    With `defer`, for a pass over a later span of the history (one process of a split audit),
    a job first met mid-chain, or through an entry that does not parse, may well have started
    in an earlier span: its entries are set aside in `deferred` instead, until the pass that
    met the job first takes them (`take`), so that every job is replayed whole, in order, by
    one pass.
    """

    def __init__(
        self,
        ring: KeyRing,
        on_job: Callable[[PassedJob], None],
        *,
        partial: str = "report",
        share: tuple[int, int] | None = None,
        digests: bool = True,
        defer: bool = False,
    ) -> None:
        if partial not in ("report", "anchor", "skip"):
            raise ValueError(f"partial must be report, anchor or skip, not {partial!r}")
        # (index, count): this pass checks only the jobs `job_share` gives to `index`, so
        # `count` processes can split one history between them.
        self._share = share
        # Without digests (a replay that compares no streams), entries keep their event ids.
        self._digests = digests
        self._ring = ring
        self._on_job = on_job
        self._partial = partial
        self._open: dict[str, _OpenJob] = {}
        # Jobs that reached a terminal state (state after it) or were skipped: an event that
        # comes later for one of them is reported instead of starting the job over. Only
        # ids and states stay; a finished job's replay leaves memory.
        self._closed: dict[str, str] = {}
        self._defer = defer
        # Job id -> its entries set aside, in stream order (see the class docstring).
        self.deferred: dict[str, list[tuple[str, list[bytes]]]] = {}
        self.events = 0

    @property
    def seen(self) -> set[str]:
        """Every job the pass has met so far (open, finished, skipped or set aside)."""
        return set(self._open) | set(self._closed) | set(self.deferred)

    @property
    def replayed(self) -> set[str]:
        """Every job the pass replays (open, finished or skipped), not those set aside."""
        return set(self._open) | set(self._closed)

    def take(self, entries: Iterable[tuple[str, Sequence[bytes]]]) -> None:
        """Entries set aside by this pass or a later one, for jobs this pass met first."""
        defer, self._defer = self._defer, False
        try:
            for stream_id, flat in entries:
                self.add(stream_id, flat)
        finally:
            self._defer = defer

    def _set_aside(self, job_id: str, stream_id: str, flat: Sequence[bytes]) -> bool:
        # Whether the entry goes aside: its job is set aside already, or unknown to this pass
        # and met other than by its first event.
        if job_id in self._open or job_id in self._closed:
            return False
        self.deferred.setdefault(job_id, []).append((stream_id, list(flat)))
        return True

    def add(self, stream_id: str, flat: Sequence[bytes]) -> None:
        """One raw entry of the global stream: field names and values, alternating."""
        if (
            self._share is not None
            and job_share(_job_id_of(flat), self._share[1]) != self._share[0]
        ):
            return
        try:
            event, detail_text = parse_flat_event(flat, stream_id=stream_id)
        except TamperError as error:
            if self._defer and self._set_aside(error.job_id, stream_id, flat):
                return
            self.events += 1
            digest = self._digest(flat)
            job = self._job(error.job_id, None)
            if job is not None:
                job.replayer.malformed(TamperError(error.job_id, stream_id, error.problem))
                job.digests.append((error.event_id, digest))
                job.last_stream_id = stream_id
            return
        if (
            self._defer
            and event.job_id not in self._open
            and (event.src != NO_STATE or event.job_id in self.deferred)
            and self._set_aside(event.job_id, stream_id, flat)
        ):
            return
        self.events += 1
        digest = self._digest(flat)
        job = self._job(event.job_id, event)
        if job is None:
            return
        job.replayer.add(event, detail_text=detail_text)
        job.digests.append((event.event_id, digest))
        job.last_stream_id = stream_id
        if event.dst in TERMINAL_STATES:
            self._finish(event.job_id, event.dst)

    def _digest(self, flat: Sequence[bytes]) -> list[bytes]:
        # Kept as the list Redis gave (compared with the job's own copy, also a list).
        if not self._digests:
            return _NO_FIELDS
        return flat if type(flat) is list else list(flat)

    def _job(self, job_id: str, first: Event | None) -> _OpenJob | None:
        job = self._open.get(job_id)
        if job is not None:
            return job
        closed_state = self._closed.get(job_id)
        if closed_state == "(skipped)":
            return None
        replayer = JobReplayer(job_id, self._ring)
        if closed_state is not None:
            # An event after the job ended: reported on a record of its own, which checks
            # the late events from there on.
            event_id = first.event_id if first is not None else ""
            replayer.malformed(
                TamperError(job_id, event_id, f"event after the job ended ({closed_state})")
            )
            if first is not None:
                replayer.anchor(first)
            self._closed.pop(job_id)
        elif first is not None and first.src != NO_STATE:
            if self._partial == "skip":
                self._closed[job_id] = "(skipped)"
                return None
            if self._partial == "anchor":
                replayer.anchor(first)
        job = _OpenJob(replayer=replayer, digests=[], late=closed_state is not None)
        self._open[job_id] = job
        return job

    def _finish(self, job_id: str, state: str) -> None:
        job = self._open.pop(job_id)
        self._closed[job_id] = state
        self._on_job(self._passed(job))

    @staticmethod
    def _passed(job: _OpenJob) -> PassedJob:
        return PassedJob(
            replayed=job.replayer.finish(),
            digests=job.digests,
            last_stream_id=job.last_stream_id,
            late=job.late,
        )

    def finish(self) -> None:
        """Hand out every job still open (not terminal, or cut short) at the end of the pass."""
        for job_id in list(self._open):
            job = self._open.pop(job_id)
            passed = self._passed(job)
            self._closed[job_id] = passed.replayed.state
            self._on_job(passed)
