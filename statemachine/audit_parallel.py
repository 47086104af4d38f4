"""A whole-history audit split over several processes, for long histories.

Checking an event (parse, hash, MAC, machine) costs far more than reading it, and one Python
process uses one core. Each worker process reads the whole global stream but checks only the
jobs `job_share` gives it (a job's events always go to the same worker, so its chain is seen
whole), then the parent adds up what they found. Rows come back in chunks as jobs are
checked, so `provision audit replay` prints as it goes.

Workers start with `spawn`: the parent runs an event loop, which a forked child would
inherit half-alive.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from collections.abc import Callable
from typing import Any, Final

import redis.asyncio as aioredis

from core.keyring import KeyRing
from core.keys import RedisKeys
from statemachine.audit import AuditSummary, JobAudit, audit_all
from statemachine.store import EventStore

# Below this many entries in the global stream, starting processes costs more than it saves.
PARALLEL_FROM_EVENTS: Final = 100_000
_ROWS_PER_MESSAGE: Final = 500


def _worker(
    url: str,
    namespace: str,
    keys: dict[str, bytes],
    share: tuple[int, int],
    since_ms: int | None,
    check_streams: bool,
    all_rows: bool,
    results: multiprocessing.Queue[tuple[Any, ...]],
) -> None:
    rows: list[dict[str, Any]] = []

    def collect(audit: JobAudit) -> None:
        if all_rows or audit.problems:
            rows.append(audit.summary())
            if len(rows) >= _ROWS_PER_MESSAGE:
                results.put(("rows", list(rows)))
                rows.clear()

    async def run() -> AuditSummary:
        client = aioredis.from_url(url, socket_timeout=60, socket_connect_timeout=5)
        try:
            store = EventStore(client, RedisKeys(namespace), KeyRing(keys))
            return await audit_all(
                store,
                KeyRing(keys),
                since_ms=since_ms,
                check_streams=check_streams,
                on_job=collect,
                share=share,
            )
        finally:
            await client.aclose()

    try:
        summary = asyncio.run(run())
    except Exception as error:  # reported to the parent, which raises
        results.put(("error", share[0], f"{type(error).__name__}: {error}"))
        return
    if rows:
        results.put(("rows", rows))
    results.put(("done", share[0], summary.jobs, summary.events, summary.archived))


class ParallelAuditError(RuntimeError):
    """A worker process failed (the message names it and its error)."""


def audit_in_parallel(
    url: str,
    namespace: str,
    ring: KeyRing,
    *,
    workers: int,
    since_ms: int | None = None,
    check_streams: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> AuditSummary:
    """Audit every job with `workers` processes; `on_row` gets each job's row (else failing
    rows only are kept, in the summary)."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue[tuple[Any, ...]] = context.Queue()
    processes = [
        context.Process(
            target=_worker,
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
    for process in processes:
        process.start()
    summary = AuditSummary()
    finished = 0
    try:
        while finished < workers:
            try:
                message = results.get(timeout=5)
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
            elif kind == "done":
                _, _index, jobs, events, archived = message
                summary.merge(AuditSummary(jobs=jobs, events=events, archived=archived))
                finished += 1
            else:
                raise ParallelAuditError(f"audit worker {message[1]} failed: {message[2]}")
    finally:
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
    return summary
