"""`provision integrations webhook|dead|redrive`: forward events over HTTP, handle dead letters.

    provision integrations webhook --url URL [--secret-file F] [--filter app=web] [--group G]
    provision integrations dead [--group G] [--json]
    provision integrations redrive [--group G] (--all | --id ID ...)

Redis comes from PROV_REDIS_URL, else the data folder's socket (core.runtime.settings), as for
`provision audit`. See docs/webhooks.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import click
import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from core.errors import SettingsError
from core.keys import RedisKeys
from core.runtime.logging_setup import configure_logging, log_colors_from, log_format_from
from core.runtime.redis_conn import connect, connect_with_patience
from core.runtime.settings import CommonSettings, redis_url_or_local
from statemachine.integrations.webhook.deadletter import DeadLetter, DeadLetters
from statemachine.integrations.webhook.options import (
    DEFAULT_CONSUMER,
    DEFAULT_GROUP,
    ForwarderOptions,
    WebhookConfigError,
    check_group,
    check_url,
    parse_filters,
    read_secret_file,
    redact_url,
)
from statemachine.integrations.webhook.policy import (
    DEFAULT_BASE_S,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_S,
    RetryPolicy,
)

log = structlog.get_logger("webhook")

EXIT_UNREACHABLE = 3
_STREAM_ID = re.compile(r"\d{1,20}-\d{1,20}")


def _redis_url(common: CommonSettings) -> str:
    try:
        return redis_url_or_local(common)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _common() -> CommonSettings:
    try:
        return CommonSettings.from_env(os.environ)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _group(value: str) -> str:
    try:
        return check_group(value)
    except WebhookConfigError as error:
        raise click.BadParameter(str(error)) from None


_group_option = click.option(
    "--group",
    default=DEFAULT_GROUP,
    show_default=True,
    callback=lambda _ctx, _param, value: _group(value),
    help="The integration's consumer group; also names its dead-letter and redrive streams.",
)


@click.group("integrations")
def integrations() -> None:
    """Send events to other systems; list and re-drive what could not be delivered."""


@integrations.command("webhook")
@click.option("--url", required=True, help="Where each event is POSTed (http or https).")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File holding the signing secret (mode 600). Without it requests are unsigned.",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUES",
    help="app=ID, state=STATE or trigger=TRIGGER (values comma-separated); repeatable.",
)
@_group_option
@click.option("--consumer", default=DEFAULT_CONSUMER, show_default=True, help="Consumer name.")
@click.option(
    "--from",
    "start",
    type=click.Choice(["now", "start"]),
    default="now",
    show_default=True,
    help="Where a new group begins: new events only, or the whole history.",
)
@click.option(
    "--max-attempts",
    type=click.IntRange(1, 1000),
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    help="Tries per event before it goes to the dead letters.",
)
@click.option(
    "--backoff-base",
    type=click.FloatRange(0.001, 3600),
    default=DEFAULT_BASE_S,
    show_default=True,
    help="First retry delay (s); doubles each time, with jitter.",
)
@click.option(
    "--backoff-max",
    type=click.FloatRange(0.001, 86400),
    default=DEFAULT_MAX_S,
    show_default=True,
    help="Longest retry delay (s); also caps Retry-After.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 600),
    default=10.0,
    show_default=True,
    help="Per request (s).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="POSTs at once (each job's events still go one at a time, in order).",
)
@click.option(
    "--claim-idle",
    type=click.FloatRange(1, 86400),
    default=60.0,
    show_default=True,
    help="Take over events another consumer left pending this long (s).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="PROV_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def webhook(
    url: str,
    secret_file: Path | None,
    filters: tuple[str, ...],
    group: str,
    consumer: str,
    start: str,
    max_attempts: int,
    backoff_base: float,
    backoff_max: float,
    timeout: float,
    concurrency: int,
    claim_idle: float,
    log_level: str,
) -> None:
    """POST every event (that passes the filters) to URL, signed, until SIGTERM."""
    log_format = os.environ.get("PROV_LOG_FORMAT")
    configure_logging(
        level=log_level, json=log_format_from(log_format), colors=log_colors_from(log_format)
    )
    common = _common()
    try:
        options = ForwarderOptions(
            url=check_url(url),
            group=group,
            consumer=consumer,
            secret=read_secret_file(secret_file) if secret_file is not None else None,
            filters=parse_filters(filters),
            policy=RetryPolicy(max_attempts, min(backoff_base, backoff_max), backoff_max),
            timeout_s=timeout,
            concurrency=concurrency,
            claim_idle_ms=int(claim_idle * 1000),
            start_from_history=start == "start",
        )
    except WebhookConfigError as error:
        raise click.ClickException(str(error)) from None
    redis_url = _redis_url(common)
    log.info(
        "webhook.starting",
        url=redact_url(options.url),
        group=options.group,
        consumer=options.consumer,
        signed=options.secret is not None,
        apps=sorted(options.filters.app_ids),
        states=sorted(options.filters.states),
        triggers=sorted(options.filters.triggers),
        max_attempts=options.policy.max_attempts,
    )
    if options.secret is None:
        log.warning(
            "webhook.unsigned",
            problem="no --secret-file: receivers cannot tell these requests from forgeries",
        )
    asyncio.run(_serve(options, RedisKeys(common.namespace), redis_url))


async def _serve(options: ForwarderOptions, keys: RedisKeys, url: str) -> None:
    # Imported here so `provision --help` never loads the forwarder.
    from statemachine.integrations.webhook.forwarder import Forwarder  # noqa: PLC0415
    from statemachine.integrations.webhook.sender import WebhookSender  # noqa: PLC0415

    client = await connect_with_patience(url, log, event="webhook.redis_unreachable")
    try:
        async with aiohttp.ClientSession() as session:
            sender = WebhookSender(
                session, options.url, secret=options.secret, timeout_s=options.timeout_s
            )
            forwarder = Forwarder(client, keys, options, sender)
            loop = asyncio.get_running_loop()

            def on_signal(signum: int) -> None:
                log.info("webhook.signal", signal=signal.Signals(signum).name)
                forwarder.stop()

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)
            await forwarder.run()
            log.info("webhook.stopped")
    finally:
        await client.aclose()


# --- the operator's commands ---------------------------------------------------------------


async def _open(url: str) -> aioredis.Redis:
    try:
        return await connect(url)
    except (OSError, RedisError) as error:
        click.echo(
            f"error: cannot reach Redis at {redact_url(url)}: {type(error).__name__}", err=True
        )
        sys.exit(EXIT_UNREACHABLE)


async def _list_dead(url: str, keys: RedisKeys, group: str) -> list[DeadLetter]:
    client = await _open(url)
    try:
        return await DeadLetters(client, keys, group).entries()
    except RedisError as error:
        click.echo(
            f"error: cannot read Redis at {redact_url(url)}: {type(error).__name__}", err=True
        )
        sys.exit(EXIT_UNREACHABLE)
    finally:
        await client.aclose()


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


@integrations.command("dead")
@_group_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def dead(group: str, as_json: bool) -> None:
    """List the events the group's forwarder gave up on, oldest first."""
    common = _common()
    letters = asyncio.run(_list_dead(_redis_url(common), RedisKeys(common.namespace), group))
    if as_json:
        click.echo(json.dumps({"group": group, "dead": [letter.as_dict() for letter in letters]}))
        return
    click.echo(
        f"{'ID':<16} {'EVENT':<26}  {'JOB':<26}  {'TRIGGER':<8} {'TRIES':>5}  "
        f"{'AT (UTC)':<19}  ERROR"
    )
    for letter in letters:
        click.echo(
            f"{letter.entry_id:<16} {letter.event_id:<26}  {letter.job_id:<26}  "
            f"{letter.trigger:<8} {letter.attempts:>5}  {_time(letter.at):<19}  "
            f"{letter.error[:80]}"
        )
    click.echo(f"{len(letters)} dead letter(s) in group {group}", err=True)


async def _redrive(
    url: str, keys: RedisKeys, group: str, wanted: tuple[str, ...] | None
) -> tuple[int, list[DeadLetter], list[str]]:
    """(how many were queued, the dead letters dropped as their event is gone, unknown ids)."""
    client = await _open(url)
    try:
        letters = DeadLetters(client, keys, group)
        entries = await letters.entries()
        by_id = {letter.entry_id: letter for letter in entries}
        if wanted is None:
            moved, gone = await letters.redrive(by_id)
            return moved, [by_id[ident] for ident in gone if ident in by_id], []
        chosen: list[str] = []
        missing: list[str] = []
        for ident in wanted:
            # An entry id (as `dead` lists it) names one dead letter; an event id names
            # every dead letter of that event.
            field = "entry_id" if _STREAM_ID.fullmatch(ident) else "event_id"
            found = [e.entry_id for e in entries if getattr(e, field) == ident]
            chosen.extend(found)
            if not found:
                missing.append(ident)
        moved, gone = await letters.redrive(chosen)
        return moved, [by_id[ident] for ident in gone if ident in by_id], missing
    except RedisError as error:
        click.echo(
            f"error: cannot use Redis at {redact_url(url)}: {type(error).__name__}", err=True
        )
        sys.exit(EXIT_UNREACHABLE)
    finally:
        await client.aclose()


@integrations.command("redrive")
@_group_option
@click.option("--all", "every", is_flag=True, help="Every dead letter of the group.")
@click.option(
    "--id", "ids", multiple=True, help="A dead-letter id (as `dead` lists it) or an event id."
)
def redrive(group: str, every: bool, ids: tuple[str, ...]) -> None:
    """Send dead letters back to the group's forwarder, which delivers them again."""
    if every == bool(ids):
        raise click.UsageError("give either --all or one or more --id")
    common = _common()
    moved, gone, missing = asyncio.run(
        _redrive(_redis_url(common), RedisKeys(common.namespace), group, None if every else ids)
    )
    click.echo(f"{moved} dead letter(s) queued for redelivery by group {group}")
    for letter in gone:
        click.echo(
            f"error: dead letter {letter.entry_id} (event {letter.event_id or '?'}, stream id "
            f"{letter.stream_id or '?'}): the event is no longer in the event stream (trimmed "
            "by `audit archive`), so it cannot be sent again; dropped from the dead letters",
            err=True,
        )
    for ident in missing:
        click.echo(f"error: no dead letter {ident} in group {group}", err=True)
    if missing or gone:
        sys.exit(1)
