"""`provision audit replay|verify|export|archive`: the auditor's commands.

`replay` rebuilds every job from its events alone and prints a table (or JSON lines);
`verify` checks every job's record (or, with `--file`, an export offline) and exits 0 only
when everything holds, naming each job and event that does not, and why; `export` writes
the event stream to a JSON-lines file an auditor can take away; `archive` exports, verifies
and only then trims old history. They read Redis directly (PROV_REDIS_URL, else the data
folder's socket) with the key ring (PROV_HMAC_KEYS_FILE, else the data folder's).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.cli.keys import resolve_keys_file
from core.errors import KeyRingError, SettingsError
from core.keyring import KeyRing, load_keyring
from core.keys import RedisKeys
from core.runtime.settings import CommonSettings, redis_url_or_local
from statemachine.audit.archive import ArchiveRefused, archive_history
from statemachine.audit.auditor import AuditSummary, audit_all
from statemachine.audit.export import export_events, verify_export
from statemachine.audit.parallel import PARALLEL_FROM_EVENTS, ParallelAuditError, audit_in_parallel
from statemachine.integrations.webhook.options import redact_url
from statemachine.store import EventStore

EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

T = TypeVar("T")


def parse_time(value: str | None) -> int | None:
    """Epoch milliseconds, or an ISO date/time (UTC unless it says otherwise)."""
    if not value:
        return None
    if value.isascii() and value.isdigit():
        return int(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("epoch milliseconds or an ISO date such as 2026-11-27") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


# The name the tests and older callers use.
parse_since = parse_time


def _fail(message: str, code: int = EXIT_USAGE) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _ring(common: CommonSettings) -> KeyRing:
    try:
        keys_file, _ = resolve_keys_file(None, common)
        return load_keyring(keys_file)
    except (SettingsError, KeyRingError, OSError) as error:
        _fail(str(error))
        raise AssertionError from error  # unreachable: _fail exits


def _with_store(common: CommonSettings, work: Callable[[EventStore, KeyRing], Awaitable[T]]) -> T:
    """Run `work` with a store on the configured Redis; exit 3 when Redis cannot be read."""
    ring = _ring(common)
    try:
        url = redis_url_or_local(common)
    except SettingsError as error:
        _fail(str(error))
        raise AssertionError from error

    async def run() -> T:
        client = aioredis.from_url(url, socket_timeout=60, socket_connect_timeout=5)
        try:
            return await work(EventStore(client, RedisKeys(common.namespace), ring), ring)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (RedisError, OSError) as error:
        _fail(f"cannot read Redis at {redact_url(url)}: {error}", EXIT_UNREACHABLE)
        raise AssertionError from error


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group("audit")
def audit() -> None:
    """Rebuild, check, export and archive job histories from the event streams."""


_job = click.option("--job", "job", default=None, help="Only this job id.")
_workers = click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Processes to check with (default: one per core, from 100,000 events on).",
)
_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@audit.command("replay")
@_job
@click.option("--since", default=None, help="Jobs submitted since (epoch ms or ISO).")
@_json
@_workers
def replay(job: str | None, since: str | None, as_json: bool, workers: int | None) -> None:
    """Rebuild every job's state from its events alone and print it."""
    common = CommonSettings.from_env(os.environ)
    since_ms = parse_time(since)
    if not as_json:
        click.echo(
            f"{'JOB':<26}  {'APP':<16} {'STATE':<10} {'ATT':>3}  {'REASON':<16} "
            f"{'DURATION':>9}  {'BY':<12} SUBMITTED (UTC)"
        )

    def show(row: dict[str, Any]) -> None:
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
            return
        duration = "-" if row["duration_s"] is None else f"{row['duration_s']:.1f}s"
        marks = ("" if row["intact"] else "  TAMPERED") + (
            f"  archived:{row['archived_to']}" if row["archived_to"] else ""
        )
        click.echo(
            f"{row['job_id']:<26}  {row['app_id'][:16]:<16} {row['state']:<10} "
            f"{row['attempts']:>3}  {(row['reason'] or '-')[:16]:<16} {duration:>9}  "
            f"{row['requested_by'][:12]:<12} {_time(row['created_at'])}" + marks
        )

    _audit(common, job=job, since_ms=since_ms, check_streams=False, on_row=show, workers=workers)


def _audit(
    common: CommonSettings,
    *,
    job: str | None,
    since_ms: int | None,
    check_streams: bool,
    on_row: Callable[[dict[str, Any]], None] | None,
    workers: int | None,
) -> AuditSummary:
    """One job, or every job: in this process, or split over processes for a long history."""

    async def in_process(store: EventStore, ring: KeyRing) -> AuditSummary | None:
        if workers != 1 and not job:
            length = int(await store.client.xlen(store.keys.events))
            if (workers or 0) > 1 or (workers is None and length >= PARALLEL_FROM_EVENTS):
                return None  # the parallel audit below
        return await audit_all(
            store,
            ring,
            only_job=job,
            since_ms=since_ms,
            check_streams=check_streams,
            on_job=None if on_row is None else (lambda audit: on_row(audit.summary())),
        )

    summary = _with_store(common, in_process)
    if summary is not None:
        return summary
    count = workers or max(2, min(4, os.cpu_count() or 2))
    try:
        return audit_in_parallel(
            redis_url_or_local(common),
            common.namespace,
            _ring(common),
            workers=count,
            since_ms=since_ms,
            check_streams=check_streams,
            on_row=on_row,
        )
    except ParallelAuditError as error:
        _fail(str(error), EXIT_UNREACHABLE)
        raise AssertionError from error


def _report(
    summary: AuditSummary, problems: list[dict[str, str]], as_json: bool, what: str
) -> None:
    if as_json:
        click.echo(
            json.dumps(
                {
                    "jobs": summary.jobs,
                    "events": summary.events,
                    "archived": summary.archived,
                    "ok": not problems,
                    "problems": problems,
                },
                sort_keys=True,
            )
        )
    else:
        for problem in problems:
            click.echo(
                f"job {problem['job_id']} event {problem['event_id'] or '-'}: {problem['problem']}"
            )
        failing = len({problem["job_id"] for problem in problems})
        verdict = "every record holds" if not problems else f"{failing} job(s) fail"
        archived = f", {summary.archived} archived" if summary.archived else ""
        click.echo(
            f"{summary.jobs} job(s), {summary.events} event(s){archived} checked in {what}: "
            f"{verdict}",
            err=bool(problems),
        )
    sys.exit(EXIT_PROBLEMS if problems else 0)


def _verify_file(path: Path, ring: KeyRing, as_json: bool) -> None:
    try:
        verdict = verify_export(path, ring)
    except OSError as error:
        _fail(f"cannot read {path}: {error}")
        return
    problems = [
        {"job_id": "(file)", "event_id": "", "problem": problem}
        for problem in verdict.file_problems
    ] + [
        {"job_id": p.job_id, "event_id": p.event_id, "problem": p.problem}
        for job in verdict.failing
        for p in job.replayed.problems
    ]
    summary = AuditSummary(jobs=verdict.jobs, events=verdict.events)
    _report(summary, problems, as_json, str(path))


@audit.command("verify")
@_job
@click.option(
    "--file",
    "file_",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Verify this export offline (key ring only, no Redis).",
)
@_json
@_workers
def verify(job: str | None, file_: Path | None, as_json: bool, workers: int | None) -> None:
    """Check every job's chain, macs, transitions, snapshot and both streams; exit 1 if not."""
    common = CommonSettings.from_env(os.environ)
    if file_ is not None:
        if job:
            _fail("--job and --file do not go together")
        _verify_file(file_, _ring(common), as_json)
        return
    summary = _audit(
        common, job=job, since_ms=None, check_streams=True, on_row=None, workers=workers
    )
    if job and summary.jobs == 1 and not (summary.events or summary.archived or summary.failing):
        click.echo(f"no job {job}", err=True)
        sys.exit(EXIT_PROBLEMS)
    problems = [
        {"job_id": row["job_id"], "event_id": p["event_id"], "problem": p["problem"]}
        for row in summary.failing
        for p in row["problems"]
    ]
    _report(summary, problems, as_json, "Redis")


_out = click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The JSON-lines file to write (replaced only once complete).",
)


@audit.command("export")
@click.option("--since", default=None, help="Events written since (epoch ms or ISO).")
@_out
def export(since: str | None, out: Path) -> None:
    """Write the event stream to a file an auditor can verify offline with the key ring."""
    common = CommonSettings.from_env(os.environ)
    since_ms = parse_time(since)
    out = out.expanduser().resolve()
    if not out.parent.is_dir():
        _fail(f"no folder for {out}")
    result = _with_store(
        common, lambda store, ring: export_events(store, ring, out, since_ms=since_ms)
    )
    click.echo(
        f"exported {result.events} event(s) of {result.jobs} job(s) to {result.path} "
        f"(sha256 {result.sha256})"
    )


@audit.command("archive")
@click.option("--before", required=True, help="Archive events older than this (epoch ms or ISO).")
@_out
def archive(before: str, out: Path) -> None:
    """Export and verify the history older than --before, then trim it from Redis."""
    common = CommonSettings.from_env(os.environ)
    before_ms = parse_time(before)
    assert before_ms is not None
    out = out.expanduser().resolve()
    if out.exists():
        _fail(f"{out} exists: an archive never overwrites another")
    if not out.parent.is_dir():
        _fail(f"no folder for {out}")

    async def run(store: EventStore, ring: KeyRing) -> None:
        try:
            outcome = await archive_history(store, ring, out, before_ms=before_ms)
        except ArchiveRefused as error:
            _fail(str(error), EXIT_PROBLEMS)
            return
        record = outcome.record
        click.echo(
            f"archive {record.archive_id}: {record.events} event(s) of {record.jobs} job(s) "
            f"in {record.file} (sha256 {record.sha256}); {outcome.jobs_archived} finished "
            f"job(s) moved out, {outcome.events_trimmed} event(s) trimmed from the global stream"
        )

    _with_store(common, run)
