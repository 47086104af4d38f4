"""`provision submit|jobs|logs|cancel`: the panel's HTTP API from the command line
(docs/architecture.md §7).

These commands talk to the panel, never to Redis, so the panel's access rules apply to them as
to a browser. Where: `PROV_PANEL_URL` (default `http://127.0.0.1:8080`); who: `PROV_TOKEN`,
else the admin token `provision up` leaves in `<PROV_DATA_DIR>/admin.token`.

Exit codes, the same for every command:

    0    done (with --follow: the job succeeded)
    1    the job failed (--follow), or the panel refused (no such job, already ended, 401, 403)
    2    bad usage: options, a `--set`, an unknown app, inputs the panel rejected (400, 422)
    3    the panel could not be reached, or answered with an error of its own (5xx)
    130  interrupted (Ctrl-C); a followed job goes on running

Standard output carries only the result (a job id, a table, JSON, a job's stdout lines), so
it can be captured; messages and errors go to standard error. A job's output lines reach a
pipe or a file as they are, and a terminal with their control characters escaped (`\\x1b`), so
an installer's output cannot re-title or clear the operator's terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, NoReturn

import click

from core.errors import SettingsError
from core.runtime.settings import ClientSettings
from panel.client.panel_client import (
    ApiError,
    Forbidden,
    InputValue,
    PanelClient,
    PanelError,
    PanelProtocolError,
    PanelUnreachable,
    ServerError,
    StreamMessage,
    Unauthorized,
    token_of,
)
from statemachine.machine import FAILED, RETRY_WAIT, STATES, SUCCEEDED, TERMINAL_STATES, Trigger

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_PANEL: Final = 3
EXIT_INTERRUPTED: Final = 130

# While following, a stream that breaks is resumed from its last id (nothing lost, nothing
# repeated); this many attempts in a row without a message means the panel is gone.
RECONNECT_ATTEMPTS: Final = 10
RECONNECT_MAX_DELAY_S: Final = 5.0

STDIN_MARKER: Final = "-"

_STATE_COLOURS: Final[dict[str, str]] = {SUCCEEDED: "green", FAILED: "red", RETRY_WAIT: "yellow"}
_DETAIL_SHOWN: Final = ("reason", "exit_code", "duration_s", "delay_s")


@dataclass(slots=True)
class _Progress:
    """What an interrupted command can still tell the user (the job it had submitted)."""

    job_id: str | None = None


# -- running a command ---------------------------------------------------------------------


def _settings() -> ClientSettings:
    try:
        # os.environ is read here, in the command, and nowhere deeper (STYLE: settings).
        return ClientSettings.from_env(os.environ)
    except SettingsError as error:
        _die(str(error), EXIT_USAGE)


def _client(settings: ClientSettings) -> PanelClient:
    try:
        return PanelClient(settings.panel_url, token_of(settings))
    except ValueError as error:
        _die(f"PROV_PANEL_URL: {error}", EXIT_USAGE)
    except PanelError as error:
        _die(str(error), EXIT_USAGE)


def _die(message: str, code: int) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(code)


def _run(
    work: Callable[[PanelClient], Coroutine[Any, Any, int]],
    *,
    progress: _Progress | None = None,
) -> NoReturn:
    """Run one command's coroutine against the panel; turn its outcome into an exit code."""
    client = _client(_settings())

    async def main() -> int:
        async with client:
            return await work(client)

    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        hint = ""
        if progress is not None and progress.job_id is not None:
            hint = f"; job {progress.job_id} goes on (provision logs -f {progress.job_id})"
        click.echo(f"interrupted{hint}", err=True)
        code = EXIT_INTERRUPTED
    except PanelError as error:
        _report(error)
        code = _exit_code_of(error)
    raise SystemExit(code)


def _exit_code_of(error: PanelError) -> int:
    if isinstance(error, PanelUnreachable | PanelProtocolError | ServerError):
        return EXIT_PANEL
    return EXIT_FAILED


def _report(error: PanelError) -> None:
    if not isinstance(error, ApiError):
        click.echo(f"error: {error}", err=True)
        return
    message = error.message
    if isinstance(error, Unauthorized):
        message += " (set PROV_TOKEN to a token from `provision tokens create <user>`)"
    elif isinstance(error, Forbidden):
        message += " (the token's role does not allow this)"
    elif isinstance(error, ServerError):
        message = f"the panel failed ({error.status}): {message}"
    click.echo(f"error: {message}", err=True)
    for name, problem in sorted(error.errors.items()):
        click.echo(f"  {name}: {problem}", err=True)


# -- formatting ----------------------------------------------------------------------------


def local_time(epoch_ms: object, pattern: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Epoch milliseconds as a local time, or "-" when absent."""
    if not isinstance(epoch_ms, int | float) or isinstance(epoch_ms, bool):
        return "-"
    return datetime.fromtimestamp(epoch_ms / 1000).astimezone().strftime(pattern)


def event_line(event: Mapping[str, Any]) -> str:
    """One timeline line: `12:00:01 verified   agent:host-1  reason=...`."""
    state = str(event.get("dst", "?"))
    parts = [
        local_time(event.get("at"), "%H:%M:%S"),
        click.style(f"{state:<10}", fg=_STATE_COLOURS.get(state), bold=state in TERMINAL_STATES),
        str(event.get("actor", "")),
    ]
    extras: list[str] = []
    if event.get("trigger") == Trigger.START:
        extras.append(f"attempt {event.get('attempt')}")
    detail = event.get("detail")
    if isinstance(detail, dict):
        extras.extend(f"{key}={detail[key]}" for key in _DETAIL_SHOWN if key in detail)
        if "next_retry_at" in detail:
            extras.append(f"next at {local_time(detail['next_retry_at'], '%H:%M:%S')}")
    line = " ".join(parts)
    return f"{line}  {' '.join(extras)}" if extras else line


# Every control character (C0, DEL, C1) but tab: an installer's `\033]0;TITLE\007\033[2J`
# would re-title and clear the operator's terminal. Shown as `\x1b`, `\x07`, `\x9b`...
_CONTROLS: Final = {
    code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if code != 0x09
}


def escape_controls(text: str) -> str:
    """`text` with every control character but tab written as a `\\xNN` escape."""
    return text.translate(_CONTROLS)


def terminal_text(text: str, *, is_terminal: bool) -> str:
    """What a job's output line becomes on its way out: escaped for a terminal, where control
    characters would act; as it is for a pipe or a file, so scripts get what was said."""
    return escape_controls(text) if is_terminal else text


def stream_is_terminal(err: bool) -> bool:
    """Whether standard error (`err`) or standard output is a terminal (tests replace this)."""
    stream = sys.stderr if err else sys.stdout
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def log_line(line: Mapping[str, Any], *, is_terminal: bool = True) -> str:
    """One output line in the timeline: `  out | ...` or `  err | ...` (red on a terminal,
    control characters escaped there; plain and as it is otherwise)."""
    text = terminal_text(str(line.get("line", "")), is_terminal=is_terminal)
    stderr = line.get("stream") == "stderr"
    if not is_terminal:
        return ("  err | " if stderr else "  out | ") + text
    if stderr:
        return click.style("  err | ", fg="red") + text
    return click.style("  out | ", dim=True) + text


def _print_log_line(line: Mapping[str, Any], attempt_seen: list[int]) -> None:
    """A job's output as it was: stdout lines to stdout, stderr lines to stderr (escaped on a
    terminal: `terminal_text`)."""
    attempt = line.get("attempt")
    if isinstance(attempt, int) and attempt_seen and attempt != attempt_seen[-1]:
        # Lines of a retry follow those of the failed run; say where one ends.
        click.echo(click.style(f"--- attempt {attempt} ---", dim=True), err=True)
    if isinstance(attempt, int) and (not attempt_seen or attempt != attempt_seen[-1]):
        attempt_seen.append(attempt)
    err = line.get("stream") == "stderr"
    terminal = stream_is_terminal(err)
    text = terminal_text(str(line.get("line", "")), is_terminal=terminal)
    # color=True off a terminal: click would strip colour codes, and a pipe gets the line whole.
    click.echo(text, err=err, color=None if terminal else True)


def _outcome(job: Mapping[str, Any]) -> str:
    text = f"job {job.get('job_id')} {job.get('state')}"
    if job.get("reason"):
        text += f": {job['reason']}"
    if job.get("exit_code") is not None:
        text += f" (exit code {job['exit_code']})"
    return text


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        click.echo("  ".join(cells).rstrip())


# -- following a job -----------------------------------------------------------------------


async def follow(
    panel: PanelClient, job_id: str, on_message: Callable[[StreamMessage], None]
) -> None:
    """Hand every event and log line of a job to `on_message` until its terminal event.

    The panel keeps the stream open after the end, so the terminal event is what stops us. A
    stream that breaks (the panel restarted) is resumed from the last id seen.
    """
    last_id: str | None = None
    attempts_without_progress = 0
    while True:
        progressed = False
        try:
            async with contextlib.aclosing(panel.stream(job_id, last_id)) as messages:
                async for message in messages:
                    progressed = True
                    last_id = message.id or last_id
                    on_message(message)
                    if message.kind == "event" and _is_terminal(message.data):
                        return
            problem = "the panel closed the stream"
        except PanelUnreachable as error:
            if last_id is None:
                raise  # never connected: a wrong URL or a stopped panel, say so at once
            problem = error.problem
        attempts_without_progress = 0 if progressed else attempts_without_progress + 1
        if attempts_without_progress >= RECONNECT_ATTEMPTS:
            raise PanelUnreachable(panel.base_url, problem)
        click.echo(f"stream interrupted ({problem}); resuming", err=True)
        await asyncio.sleep(min(float(attempts_without_progress), RECONNECT_MAX_DELAY_S))


def _is_terminal(event: object) -> bool:
    return isinstance(event, dict) and event.get("dst") in TERMINAL_STATES


# -- provision submit ----------------------------------------------------------------------


def parse_sets(pairs: Sequence[str]) -> dict[str, list[str]]:
    """`--set k=v` options as name -> every value given, in order."""
    values: dict[str, list[str]] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--set")
        values.setdefault(name, []).append(value)
    return values


def _read_secret(name: str, label: str) -> str:
    stdin = sys.stdin
    if stdin.isatty():
        value: str = click.prompt(label or name, hide_input=True, err=True)
        return value
    line = stdin.readline()
    if not line:
        raise click.BadParameter(
            f"{name}=- but standard input is empty; give the value there", param_hint="--set"
        )
    return line.removesuffix("\n").removesuffix("\r")


def build_inputs(
    given: Mapping[str, list[str]],
    specs: Sequence[Mapping[str, Any]],
    read_secret: Callable[[str, str], str],
) -> dict[str, InputValue]:
    """The `inputs` object: one string per field, a list for a multiselect, secrets read."""
    spec_of = {str(spec.get("name")): spec for spec in specs}
    inputs: dict[str, InputValue] = {}
    for name, values in given.items():
        kind = spec_of.get(name, {}).get("type")
        if kind == "multiselect":
            inputs[name] = list(values)
            continue
        if len(values) > 1:
            raise click.BadParameter(
                f"{name} was given {len(values)} times; only a multiselect takes several",
                param_hint="--set",
            )
        value = values[0]
        if kind == "password" and value == STDIN_MARKER:
            value = read_secret(name, str(spec_of[name].get("label") or name))
        inputs[name] = value
    return inputs


async def _submit(
    panel: PanelClient,
    *,
    app_id: str,
    given: Mapping[str, list[str]],
    target: str | None,
    follow_job: bool,
    as_json: bool,
    progress: _Progress,
) -> int:
    try:
        app = await panel.app(app_id)
        specs = app.get("inputs")
        inputs = build_inputs(given, specs if isinstance(specs, list) else [], _read_secret)
        submitted = await panel.submit(app_id, inputs, target)
    except (Unauthorized, Forbidden, ServerError):
        raise
    except ApiError as error:
        # Everything else the panel refuses here is about what was typed: no such app, an
        # invalid manifest, inputs that fail validation (every field error is printed).
        if error.status == 404:
            error.message = f"{error.message}: {app_id}"
        _report(error)
        return EXIT_USAGE
    except click.UsageError as error:
        click.echo(f"error: {error.format_message()}", err=True)
        return EXIT_USAGE
    except click.Abort:  # Ctrl-C at the hidden prompt: nothing was submitted
        click.echo("interrupted; nothing was submitted", err=True)
        return EXIT_INTERRUPTED
    job_id = str(submitted["job_id"])
    progress.job_id = job_id
    click.echo(json.dumps(submitted) if as_json else job_id)
    if not follow_job:
        return EXIT_OK

    def show(message: StreamMessage) -> None:
        if as_json:
            click.echo(json.dumps({"kind": message.kind, "id": message.id, "data": message.data}))
        elif message.kind == "event" and isinstance(message.data, dict):
            click.echo(event_line(message.data))
        elif message.kind == "log" and isinstance(message.data, dict):
            terminal = stream_is_terminal(False)
            line = log_line(message.data, is_terminal=terminal)
            click.echo(line, color=None if terminal else True)

    await follow(panel, job_id, show)
    job = await panel.job(job_id)
    if as_json:
        click.echo(json.dumps({"kind": "job", "id": None, "data": job}))
    if job.get("state") == SUCCEEDED:
        return EXIT_OK
    click.echo(_outcome(job), err=True)
    return EXIT_FAILED


@click.command("submit")
@click.argument("app_id", metavar="APP")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="NAME=VALUE",
    help="An input value, as typed; repeat a multiselect's name for each choice. "
    "NAME=- reads a password from standard input (prompted, hidden, on a terminal).",
)
@click.option("--target", default=None, help="The host whose agents run it (default: the panel's).")
@click.option("--follow", "follow_job", is_flag=True, help="Show the timeline and log live.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (lines, with --follow).")
def submit_command(
    app_id: str, sets: tuple[str, ...], target: str | None, follow_job: bool, as_json: bool
) -> None:
    """Submit APP for installation; print the job id.

    With --follow, wait for the job: exit 0 if it succeeded, 1 if it failed.
    """
    given = parse_sets(sets)
    progress = _Progress()
    _run(
        lambda panel: _submit(
            panel,
            app_id=app_id,
            given=given,
            target=target,
            follow_job=follow_job,
            as_json=as_json,
            progress=progress,
        ),
        progress=progress,
    )


# -- provision jobs ------------------------------------------------------------------------


async def _jobs(
    panel: PanelClient,
    *,
    filters: Mapping[str, str],
    cursor: str | None,
    limit: int,
    as_json: bool,
) -> int:
    page = await panel.jobs(filters, cursor, limit)
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return EXIT_OK
    jobs = page.get("jobs") or []
    header = ("JOB", "APP", "STATE", "ATTEMPT", "REASON", "WHO", "CREATED", "UPDATED")
    rows = [
        (
            str(job.get("job_id", "")),
            str(job.get("app_id", "")),
            str(job.get("state", "")),
            str(job.get("attempt", "")),
            str(job.get("reason") or "-"),
            str(job.get("requested_by") or "-"),
            local_time(job.get("created_at")),
            local_time(job.get("updated_at")),
        )
        for job in jobs
        if isinstance(job, dict)
    ]
    _table(header, rows)
    if page.get("next_cursor"):
        click.echo(f"more: provision jobs --cursor {page['next_cursor']}", err=True)
    return EXIT_OK


@click.command("jobs")
@click.option(
    "--state",
    # The plain values: click matches an enum choice by member name.
    type=click.Choice([state.value for state in STATES]),
    default=None,
    help="Only jobs in this state.",
)
@click.option("--app", "app_id", default=None, help="Only jobs of this app.")
@click.option("--user", default=None, help="Only jobs this user submitted.")
@click.option("--target", default=None, help="Only jobs for this host.")
@click.option(
    "--limit", type=click.IntRange(1, 200), default=50, show_default=True, help="At most N jobs."
)
@click.option("--cursor", default=None, help="Continue a listing (printed after a full page).")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
def jobs_command(
    state: str | None,
    app_id: str | None,
    user: str | None,
    target: str | None,
    limit: int,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    filters = {
        name: value
        for name, value in (("state", state), ("app", app_id), ("user", user), ("target", target))
        if value
    }
    _run(lambda panel: _jobs(panel, filters=filters, cursor=cursor, limit=limit, as_json=as_json))


# -- provision logs ------------------------------------------------------------------------


async def _logs(panel: PanelClient, *, job_id: str, follow_job: bool) -> int:
    attempt_seen: list[int] = []
    if not follow_job:
        await panel.job(job_id)  # a clear "no such job" before an empty log
        after: str | None = None
        while page := await panel.log(job_id, after):
            for line in page:
                _print_log_line(line, attempt_seen)
            after = str(page[-1]["id"])
        return EXIT_OK

    def show(message: StreamMessage) -> None:
        if message.kind == "log" and isinstance(message.data, dict):
            _print_log_line(message.data, attempt_seen)

    await follow(panel, job_id, show)
    job = await panel.job(job_id)
    click.echo(click.style(_outcome(job), dim=True), err=True)
    return EXIT_OK


@click.command("logs")
@click.argument("job_id", metavar="JOB")
@click.option("-f", "--follow", "follow_job", is_flag=True, help="Follow until the job ends.")
def logs_command(job_id: str, follow_job: bool) -> None:
    """Print a job's output: its stdout lines to stdout, its stderr lines to stderr."""
    _run(lambda panel: _logs(panel, job_id=job_id, follow_job=follow_job))


# -- provision cancel ----------------------------------------------------------------------


async def _cancel(panel: PanelClient, *, job_id: str) -> int:
    answer = await panel.cancel(job_id)
    click.echo(str(answer.get("state", "")))
    return EXIT_OK


@click.command("cancel")
@click.argument("job_id", metavar="JOB")
def cancel_command(job_id: str) -> None:
    """Cancel a job; print its state at that moment (exit 1 if it already ended)."""
    _run(lambda panel: _cancel(panel, job_id=job_id))
