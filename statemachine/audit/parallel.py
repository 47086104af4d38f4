"""A whole-history audit split over several processes, for long histories.

Checking an event (parse, hash, MAC, machine) costs far more than reading it, and one Python
process uses one core, so the work is split over processes, in one of two ways:

- by span (verify, the default): the stream is cut in consecutive spans of time, a few per
  worker, handed out one at a time (so a worker that gets quick spans takes more). Each span
  has its own pass, which replays the jobs it meets first. A job a span meets mid-chain (or
  through an entry that does not parse) may have started in an earlier span: its entries are
  set aside and, once every span has been read, handed to the span that met the job first,
  which replays them in order after its own, exactly as one pass would. Nothing is read
  twice. If a job begins anew in a later span after an earlier one met it (a second
  `submit`: only tampering does that), the split is abandoned for the one below, which
  reports it as one pass does.
- by share (replay, whose rows are printed as they come): each worker reads the whole stream
  and replays only the jobs `job_share` gives it (a job's events always go to the same
  worker, so its chain is seen whole).

The parent adds up what the workers found. Workers start with `spawn`: the parent runs an
event loop, which a forked child would inherit half-alive.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from collections.abc import Callable, Coroutine, Sequence
from multiprocessing.process import BaseProcess
from typing import Any, Final, cast

import redis.asyncio as aioredis

from core.errors import ProvisionError
from core.keyring import KeyRing
from core.keys import RedisKeys
from core.runtime.redis_conn import connect_sync
from core.stream_ids import stream_id_key
from core.text import as_text_lenient
from statemachine.audit.auditor import AuditSummary, HistoryAudit, JobAudit, audit_all
from statemachine.store import EventStore

# Below this many entries in the global stream, starting processes costs more than it saves.
PARALLEL_FROM_EVENTS: Final = 100_000
_ROWS_PER_MESSAGE: Final = 500
_POLL_S: Final = 5.0
# Spans of the stream per worker, handed out one at a time: a worker whose spans go quicker
# (fewer events in them, or more CPU for it) takes more, so the workers end together.
SPANS_PER_WORKER: Final = 16

# (id, fields) of entries set aside, by job id.
SetAside = dict[str, list[tuple[str, list[bytes]]]]
Message = tuple[Any, ...]


class ParallelAuditError(ProvisionError, RuntimeError):
    """A worker process failed (the message names it and its error)."""


class _Rows:
    """Rows a worker sends to the parent, a chunk at a time."""

    def __init__(self, results: multiprocessing.Queue[Message], *, all_rows: bool) -> None:
        self._results = results
        self._all_rows = all_rows
        self._rows: list[dict[str, Any]] = []

    def collect(self, audit: JobAudit) -> None:
        if self._all_rows or audit.problems:
            self._rows.append(audit.summary())
            if len(self._rows) >= _ROWS_PER_MESSAGE:
                self.send()

    def send(self) -> None:
        if self._rows:
            self._results.put(("rows", list(self._rows)))
            self._rows.clear()


def _client(url: str) -> aioredis.Redis:
    return aioredis.from_url(url, socket_timeout=60, socket_connect_timeout=5)


def _run_and_report(
    run: Callable[[], Coroutine[Any, Any, AuditSummary | None]],
    rows: _Rows,
    results: multiprocessing.Queue[Message],
    share: tuple[int, int],
) -> None:
    """Run a worker's pass and tell the parent how it ended (None: told to stop, silent)."""
    try:
        summary = asyncio.run(run())
    except Exception as error:  # reported to the parent, which raises
        results.put(("error", share[0], f"{type(error).__name__}: {error}"))
        return
    if summary is None:
        return
    rows.send()
    results.put(("done", share[0], summary.jobs, summary.events, summary.archived))


def _share_worker(
    url: str,
    namespace: str,
    keys: dict[str, bytes],
    share: tuple[int, int],
    since_ms: int | None,
    check_streams: bool,
    all_rows: bool,
    results: multiprocessing.Queue[Message],
) -> None:
    rows = _Rows(results, all_rows=all_rows)

    async def run() -> AuditSummary:
        client = _client(url)
        try:
            store = EventStore(client, RedisKeys(namespace), KeyRing(keys))
            return await audit_all(
                store,
                KeyRing(keys),
                since_ms=since_ms,
                check_streams=check_streams,
                on_job=rows.collect,
                share=share,
            )
        finally:
            await client.aclose()

    _run_and_report(run, rows, results, share)


def _span_worker(
    url: str,
    namespace: str,
    keys: dict[str, bytes],
    share: tuple[int, int],
    check_streams: bool,
    spans: multiprocessing.Queue[tuple[int, str, str] | None],
    results: multiprocessing.Queue[Message],
    commands: multiprocessing.Queue[Message],
) -> None:
    rows = _Rows(results, all_rows=False)

    async def run() -> AuditSummary | None:
        client = _client(url)
        try:
            store = EventStore(client, RedisKeys(namespace), KeyRing(keys))
            passes: dict[int, HistoryAudit] = {}
            # Spans are taken one at a time, so a worker that gets quick spans takes more.
            while (span := await asyncio.to_thread(spans.get)) is not None:
                number, start, end = span
                audit_pass = await HistoryAudit.open(
                    store,
                    KeyRing(keys),
                    check_streams=check_streams,
                    on_job=rows.collect,
                    defer=number > 0,
                    report_archives=number == 0,
                )
                await audit_pass.read(start=start, end=end)
                passes[number] = audit_pass
                history = audit_pass.history
                rows.send()
                results.put(
                    (
                        "met",
                        number,
                        share[0],
                        history.replayed,
                        history.deferred,
                        audit_pass.read_until_ms,
                    )
                )
            # The parent answers once every span has been read.
            reply = await asyncio.to_thread(commands.get)
            if reply[0] == "stop":
                return None
            _, taken, seen, read_until_ms = reply
            for number, audit_pass in sorted(passes.items()):
                await audit_pass.settle(taken.get(number, ()), read_until_ms=read_until_ms)
            # Its share of the index, through one of its passes (or a fresh one if it got
            # no span): the jobs no span met.
            index_pass = passes[max(passes)] if passes else None
            if index_pass is None:
                index_pass = await HistoryAudit.open(
                    store,
                    KeyRing(keys),
                    check_streams=check_streams,
                    on_job=rows.collect,
                    report_archives=False,
                )
            await index_pass.check_index(seen, share=share)
            summary = AuditSummary()
            for audit_pass in {*passes.values(), index_pass}:
                summary.merge(audit_pass.summary)
            return summary
        finally:
            await client.aclose()

    _run_and_report(run, rows, results, share)


def stream_spans(url: str, namespace: str, count: int) -> list[tuple[str, str]]:
    """`count` consecutive spans (start, end: XRANGE bounds) of the global stream, of even
    length in time (one span when the stream is too short in time to cut)."""
    client = connect_sync(url)
    try:
        key = RedisKeys(namespace).events
        first = cast(list[tuple[bytes, Any]], client.xrange(key, count=1))
        last = cast(list[tuple[bytes, Any]], client.xrevrange(key, count=1))
    finally:
        client.close()
    if not first or not last:
        return [("-", "+")]
    low = stream_id_key(as_text_lenient(first[0][0]))[0]
    high = stream_id_key(as_text_lenient(last[0][0]))[0]
    if high - low < count:
        return [("-", "+")]
    cuts = [f"{low + (high - low) * part // count}-0" for part in range(1, count)]
    starts = ["-", *cuts]
    ends = [*("(" + cut for cut in cuts), "+"]
    return list(zip(starts, ends, strict=True))


def audit_in_parallel(
    url: str,
    namespace: str,
    ring: KeyRing,
    *,
    workers: int,
    since_ms: int | None = None,
    check_streams: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    spans_per_worker: int = SPANS_PER_WORKER,
) -> AuditSummary:
    """Audit every job with `workers` processes; `on_row` gets each job's row (else failing
    rows only are kept, in the summary). Without `on_row` (and `since_ms`), the stream is
    split in `workers * spans_per_worker` spans."""
    if on_row is None and since_ms is None:
        spans = stream_spans(url, namespace, workers * spans_per_worker)
        if len(spans) > 1:
            summary = audit_by_spans(
                url, namespace, ring, spans, workers=workers, check_streams=check_streams
            )
            if summary is not None:
                return summary
    return _by_shares(
        url,
        namespace,
        ring,
        workers=workers,
        since_ms=since_ms,
        check_streams=check_streams,
        on_row=on_row,
    )


def _by_shares(
    url: str,
    namespace: str,
    ring: KeyRing,
    *,
    workers: int,
    since_ms: int | None,
    check_streams: bool,
    on_row: Callable[[dict[str, Any]], None] | None,
) -> AuditSummary:
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Message] = context.Queue()
    processes = [
        context.Process(
            target=_share_worker,
            args=(
                url,
                namespace,
                dict(ring.keys),
                (index, workers),
                since_ms,
                check_streams,
                on_row is not None,
                results,
            ),
            name=f"audit-{index}",
            daemon=True,
        )
        for index in range(workers)
    ]
    summary = AuditSummary()
    try:
        for process in processes:
            process.start()
        _gather(results, processes, summary, on_row, until="done", count=workers)
    finally:
        _join(processes)
    return summary


def audit_by_spans(
    url: str,
    namespace: str,
    ring: KeyRing,
    spans: Sequence[tuple[str, str]],
    *,
    workers: int,
    check_streams: bool,
) -> AuditSummary | None:
    """Audit every job split over `workers` processes by `spans` of the global stream (see
    the module doc); None when that cannot be exact (a job began anew in a later span)."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[Message] = context.Queue()
    todo: multiprocessing.Queue[tuple[int, str, str] | None] = context.Queue()
    for number, (start, end) in enumerate(spans):
        todo.put((number, start, end))
    for _worker in range(workers):
        todo.put(None)
    commands: list[multiprocessing.Queue[Message]] = [context.Queue() for _ in range(workers)]
    processes = [
        context.Process(
            target=_span_worker,
            args=(
                url,
                namespace,
                dict(ring.keys),
                (index, workers),
                check_streams,
                todo,
                results,
                commands[index],
            ),
            name=f"audit-{index}",
            daemon=True,
        )
        for index in range(workers)
    ]
    summary = AuditSummary()
    try:
        for process in processes:
            process.start()
        met = _gather(results, processes, summary, None, until="met", count=len(spans))
        handover = _hand_over([met[number][1:] for number in range(len(spans))])
        if handover is None:
            for command in commands:
                command.put(("stop",))
            return None
        taken, seen, read_until_ms = handover
        for index, command in enumerate(commands):
            mine = {number: taken[number] for number in met if met[number][0] == index}
            command.put(("settle", mine, seen, read_until_ms))
        _gather(results, processes, summary, None, until="done", count=workers)
    finally:
        _join(processes)
    return summary


def _hand_over(
    met: list[tuple[set[str], SetAside, int | None]],
) -> tuple[list[list[tuple[str, list[bytes]]]], set[str], int | None] | None:
    """What each span's pass takes, every job met, and where the reading ended.

    Every set-aside entry goes to the pass that met its job first (the earliest span), in
    span order; None if a job some span replayed from its start was met by an earlier one.
    """
    first_met: dict[str, int] = {}
    for number, (replayed, deferred, _until) in enumerate(met):
        for job_id in replayed:
            if job_id in first_met:
                return None
            first_met[job_id] = number
        for job_id in deferred:
            first_met.setdefault(job_id, number)
    taken: list[list[tuple[str, list[bytes]]]] = [[] for _ in met]
    by_job: list[dict[str, list[tuple[str, list[bytes]]]]] = [{} for _ in met]
    for _replayed, deferred, _until in met:
        for job_id, entries in deferred.items():
            by_job[first_met[job_id]].setdefault(job_id, []).extend(entries)
    for number, jobs in enumerate(by_job):
        taken[number] = [entry for entries in jobs.values() for entry in entries]
    ends = [until for _replayed, _deferred, until in met if until is not None]
    return taken, set(first_met), max(ends) if ends else None


def _gather(
    results: multiprocessing.Queue[Message],
    processes: Sequence[BaseProcess],
    summary: AuditSummary,
    on_row: Callable[[dict[str, Any]], None] | None,
    *,
    until: str,
    count: int,
) -> dict[int, Any]:
    """Read workers' messages until `count` of kind `until` came; returns them by worker."""
    arrived: dict[int, Any] = {}
    while len(arrived) < count:
        try:
            message = results.get(timeout=_POLL_S)
        except queue.Empty:
            dead = [p.name for p in processes if not p.is_alive() and p.exitcode != 0]
            if dead:
                raise ParallelAuditError(f"audit worker(s) {dead} died") from None
            continue
        kind = message[0]
        if kind == "rows":
            for row in message[1]:
                if on_row is not None:
                    on_row(row)
                if not row["intact"]:
                    summary.failing.append(row)
        elif kind == "error":
            raise ParallelAuditError(f"audit worker {message[1]} failed: {message[2]}")
        elif kind == until == "done":
            _, index, jobs, events, archived = message
            summary.merge(AuditSummary(jobs=jobs, events=events, archived=archived))
            arrived[index] = None
        elif kind == until:
            arrived[message[1]] = message[2:]
    return arrived


def _join(processes: Sequence[BaseProcess]) -> None:
    for process in processes:
        if process.pid is None:
            continue
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
