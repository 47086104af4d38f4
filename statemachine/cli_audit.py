"""`provision audit replay|verify [--job ID] [--since T] [--json]`: the auditor's commands.

`replay` rebuilds every job from its events alone and prints a table (or JSON lines);
`verify` checks every job's record and exits 0 only when everything holds, naming each job
and event that does not, and why. Both read Redis directly (PROV_REDIS_URL, else the data
folder's socket) with the key ring (PROV_HMAC_KEYS_FILE, else the data folder's).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.cli_keys import resolve_keys_file
from core.errors import KeyRingError, SettingsError
from core.keyring import KeyRing, load_keyring
from core.keys import RedisKeys
from core.settings import CommonSettings, redis_url_or_local
from statemachine.audit import JobAudit, audit_all
from statemachine.store import EventStore

EXIT_PROBLEMS = 1
EXIT_UNREACHABLE = 3


def parse_since(value: str | None) -> int | None:
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


def _load(common: CommonSettings) -> tuple[str, KeyRing]:
    try:
        url = redis_url_or_local(common)
        keys_file, _ = resolve_keys_file(None, common)
        ring = load_keyring(keys_file)
    except (SettingsError, KeyRingError, OSError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
    return url, ring


async def _run(
    common: CommonSettings,
    *,
    job: str | None,
    since_ms: int | None,
    check_global: bool,
    on_job: Callable[[JobAudit], None] | None,
) -> list[JobAudit]:
    url, ring = _load(common)
    client = aioredis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
    try:
        store = EventStore(client, RedisKeys(common.namespace), ring)
        return await audit_all(
            client,
            store,
            ring,
            only_job=job,
            since_ms=since_ms,
            check_global=check_global,
            on_job=on_job,
        )
    except (RedisError, OSError) as error:
        click.echo(f"error: cannot read Redis at {url}: {error}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    finally:
        await client.aclose()


def _time(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


@click.group("audit")
def audit() -> None:
    """Rebuild and check job histories from the event streams."""


_job = click.option("--job", "job", default=None, help="Only this job id.")
_since = click.option("--since", default=None, help="Jobs submitted since (epoch ms or ISO).")
_json = click.option("--json", "as_json", is_flag=True, help="One JSON object per job.")


@audit.command("replay")
@_job
@_since
@_json
def replay(job: str | None, since: str | None, as_json: bool) -> None:
    """Rebuild every job's state from its events alone and print it."""
    common = CommonSettings.from_env(os.environ)
    since_ms = parse_since(since)
    if not as_json:
        click.echo(
            f"{'JOB':<26}  {'APP':<16} {'STATE':<10} {'ATT':>3}  {'REASON':<16} "
            f"{'DURATION':>9}  {'BY':<12} SUBMITTED (UTC)"
        )

    def show(audit: JobAudit) -> None:
        row = audit.summary()
        if as_json:
            click.echo(json.dumps(row, sort_keys=True))
            return
        duration = "-" if row["duration_s"] is None else f"{row['duration_s']:.1f}s"
        click.echo(
            f"{row['job_id']:<26}  {row['app_id'][:16]:<16} {row['state']:<10} "
            f"{row['attempts']:>3}  {(row['reason'] or '-')[:16]:<16} {duration:>9}  "
            f"{row['requested_by'][:12]:<12} {_time(row['created_at'])}"
            + ("" if row["intact"] else "  TAMPERED")
        )

    asyncio.run(_run(common, job=job, since_ms=since_ms, check_global=False, on_job=show))


@audit.command("verify")
@_job
@_json
def verify(job: str | None, as_json: bool) -> None:
    """Check every job's chain, macs, transitions, snapshot and both streams; exit 1 if not."""
    common = CommonSettings.from_env(os.environ)
    audits = asyncio.run(_run(common, job=job, since_ms=None, check_global=True, on_job=None))
    failing = [audit for audit in audits if audit.problems]
    if as_json:
        click.echo(
            json.dumps(
                {
                    "jobs": len(audits),
                    "ok": not failing,
                    "problems": [
                        {"job_id": p.job_id, "event_id": p.event_id, "problem": p.problem}
                        for audit in failing
                        for p in audit.problems
                    ],
                },
                sort_keys=True,
            )
        )
    else:
        for audit in failing:
            for problem in audit.problems:
                click.echo(
                    f"job {problem.job_id} event {problem.event_id or '-'}: {problem.problem}"
                )
        verdict = "every record holds" if not failing else f"{len(failing)} job(s) fail"
        click.echo(f"{len(audits)} job(s) checked: {verdict}", err=bool(failing))
    if job and not audits[0].replayed.event_count and audits[0].snapshot is None:
        click.echo(f"no job {job}", err=True)
        sys.exit(EXIT_PROBLEMS)
    sys.exit(EXIT_PROBLEMS if failing else 0)
