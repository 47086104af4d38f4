"""One run of an app's installer in the sandbox, and its verify probe (docs/architecture.md §6).

`execute` starts the script with the environment the checks built, streams its redacted
output to the job's log, runs the manifest's `verify` after an exit 0, and returns the
outcome with its duration and the last log lines, which the caller writes in the same
atomic step as the outcome. Deciding what the outcome means is `core.retry`'s business, and
recording it the processor's.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from agent.checks import CheckedJob, sandbox_environment
from agent.joblog import JobLogWriter
from agent.redaction import Redactor
from agent.sandbox import run_installer
from core.retry import Cancelled, Exited, Outcome, VerifyFailed

log = structlog.get_logger("agent.processor")

# A verify command is a quick health probe, not an install: it gets a short leash.
MAX_VERIFY_S: Final = 120.0


@dataclass(slots=True)
class RunningJob:
    """A job whose installer runs now in this agent."""

    job_id: str
    entry_id: str
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when another agent took our entry (we were cut off past the lease): the run is
    # killed and its outcome is not ours to record any more.
    lease_lost: bool = False


def home_directory() -> str:
    """HOME for the scripts: the agent user's home directory."""
    try:
        return pwd.getpwuid(os.getuid()).pw_dir
    except KeyError:
        return "/root"


async def execute(
    running: RunningJob,
    checked: CheckedJob,
    attempt: int,
    *,
    client: aioredis.Redis,
    log_key: str,
    home: str,
    kill_grace_s: float,
    on_exit: Callable[[], None],
) -> tuple[Outcome, float, list[dict[str, str]]]:
    """Run the installer (and its verify probe); the outcome, its duration, and the last
    log lines, which the caller writes with the outcome (see `close_handing_over`).
    `on_exit` is called as soon as the installer has exited, before the log is closed."""
    job_id = running.job_id
    manifest = checked.manifest
    writer = JobLogWriter(client, log_key, attempt=attempt, redactor=Redactor(checked.secrets))
    dropped_lines = 0

    async def store_line(stream: str, line: str) -> None:
        # The log is best effort: a Redis hiccup must not kill a half-done install.
        nonlocal dropped_lines
        try:
            await writer.add(stream, line)
        except (RedisError, OSError):
            dropped_lines += 1

    env = sandbox_environment(
        manifest,
        checked.values,
        job_id=job_id,
        attempt=attempt,
        home=home,
        target=checked.envelope.target,
    )
    folder = checked.app.folder.resolve()
    started_at = time.monotonic()
    ran_to_an_outcome = False
    try:
        result = await run_installer(
            ["bash", str(checked.script)],
            cwd=folder,
            env=env,
            job_id=job_id,
            timeout_s=float(manifest.timeout_s),
            kill_grace_s=kill_grace_s,
            on_line=store_line,
            cancel=running.cancel,
        )
        outcome: Outcome = result.outcome
        if outcome == Exited(0) and manifest.verify:
            # The probe carries its own id: if it hangs and is swept, the sweep must not
            # also kill the service the install just started (it carries the job's id).
            probe_id = f"{job_id}.verify"
            verified = await run_installer(
                ["bash", "-c", manifest.verify],
                cwd=folder,
                env={**env, "PROV_JOB_ID": probe_id},
                job_id=probe_id,
                timeout_s=min(float(manifest.timeout_s), MAX_VERIFY_S),
                kill_grace_s=kill_grace_s,
                on_line=store_line,
                cancel=running.cancel,
            )
            if isinstance(verified.outcome, Cancelled):
                outcome = verified.outcome
            elif verified.outcome != Exited(0):
                outcome = VerifyFailed()
        ran_to_an_outcome = True
    finally:
        on_exit()
        # An outcome this agent will record carries the last lines; otherwise (cancelled
        # by a stop, lease lost) nothing will, so they are written now.
        log_tail = await _close_log(writer, hand_over=ran_to_an_outcome and not running.lease_lost)
        if dropped_lines:
            log.warning("job.log_lines_dropped", lines=dropped_lines)
    return outcome, time.monotonic() - started_at, log_tail


async def _close_log(writer: JobLogWriter, *, hand_over: bool) -> list[dict[str, str]]:
    try:
        if hand_over:
            return await asyncio.shield(writer.close_handing_over())
        await asyncio.shield(writer.close())
    except (RedisError, OSError) as error:
        log.warning("job.log_incomplete", error=str(error))
    return []
