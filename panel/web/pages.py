"""The HTML pages: catalogue, install form, job status, job history, agents.

Handlers are thin: parse the request, call the catalogue or the job service, render a
template. Validation is the shared core's (through `JobService.submit`); the form module
only maps an HTML form body onto inputs. Pages carry no inline script or style (a strict
CSP comes later): data for the scripts in `static/js/` travels in `data-*` attributes and
`<script type="application/json">` blocks. Everything is autoescaped; nothing from a
manifest or a user is ever marked safe.
"""

from __future__ import annotations

import stat
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

from aiohttp import web

from core.errors import FormError
from core.keys import is_valid_target
from core.manifest.model import Manifest
from core.runtime.catalogue import AppEntry
from core.validation import validate_inputs
from panel import appkeys
from panel.auth.access import Role, User, current_user
from panel.jobs.producer import SubmittedJob
from panel.jobs.service import CannotCancel, JobFilters, JobVerification, LogLine, is_job_id
from panel.jobs.submission_limits import SubmissionRefused
from panel.web.api import app_summary
from panel.web.errors import render_error_page
from panel.web.form_fields import (
    TARGET_FIELD,
    error_links,
    field_views,
    parse_install_form,
)
from panel.web.job_display import (
    detail_rows,
    failure_help,
    input_rows,
    texts_for_script,
)
from panel.web.page_context import render_page
from statemachine.events import Event
from statemachine.machine import STATES, TERMINAL_STATES, Trigger

routes = web.RouteTableDef()

MAX_ICON_BYTES: Final = 512 * 1024
ICON_HEADERS: Final = {
    "Content-Type": "image/svg+xml",
    # An SVG can carry script; served on its own it must never run any.
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "max-age=300",
}
STALE_AFTER_MS: Final = 15_000
# Far more than any manifest has inputs; bounds the work a hostile form body can cause.
MAX_FORM_FIELDS: Final = 500
JOBS_PER_PAGE: Final = 25
LOG_READ_LIMIT: Final = 25_000
TARGET_MESSAGE: Final = "must be a host name of lower-case letters, digits, '.', '_' and '-'"


def _render(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    return render_page(request, template, context, status=status)


def _not_found(request: web.Request, what: str) -> web.Response:
    return render_error_page(
        request, 404, f"No such {what}", f"There is no {what} at this address."
    )


def _forbidden(request: web.Request, doing: str) -> web.Response:
    return render_error_page(
        request, 403, "Not allowed", f"Your role ({current_user(request).role}) may not {doing}."
    )


# --- catalogue -------------------------------------------------------------------------------


def icon_file(app: AppEntry) -> Path | None:
    """The app's icon if its manifest names one and it is a regular file inside the folder."""
    if app.manifest is None or app.manifest.icon is None:
        return None
    path = app.folder / app.manifest.icon
    try:
        info = path.lstat()  # lstat: a symbolic link is not a regular file here
        inside = path.resolve().parent == app.folder.resolve()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or not inside or info.st_size > MAX_ICON_BYTES:
        return None
    return path


def _card(app: AppEntry) -> dict[str, Any]:
    card = app_summary(app)
    card["icon"] = card["icon"] if icon_file(app) else None
    card["letter"] = (card["name"] or app.app_id)[:1].upper()
    card["hue"] = zlib.crc32(app.app_id.encode()) % 8
    card["category"] = card["category"] or "other"
    return card


def _matches(card: dict[str, Any], query: str, category: str) -> bool:
    if category and card["category"] != category:
        return False
    if not query:
        return True
    haystack = " ".join((card["id"], card["name"] or "", card["description"] or "")).casefold()
    return all(word in haystack for word in query.casefold().split())


@routes.get("/", name="catalogue")
async def catalogue_page(request: web.Request) -> web.Response:
    """Every app as a card, grouped by category; search and category filter in the query."""
    query = request.query.get("q", "").strip()[:200]
    category = request.query.get("category", "").strip()[:100]
    cards = [_card(app) for app in request.app[appkeys.CATALOGUE].current().apps]
    categories = sorted({card["category"] for card in cards})
    shown = [card for card in cards if _matches(card, query, category)]
    groups: dict[str, list[dict[str, Any]]] = {}
    for card in sorted(shown, key=lambda card: (card["category"], card["name"].casefold())):
        groups.setdefault(card["category"], []).append(card)
    context = {
        "q": query,
        "category": category,
        "categories": categories,
        "groups": groups,
        "count": len(shown),
        "total": len(cards),
    }
    return _render(request, "catalogue.html", context)


@routes.get("/apps/{app_id}/icon", name="app_icon")
async def app_icon(request: web.Request) -> web.Response:
    """The app's icon.svg, served so that any script inside it can never run."""
    app = request.app[appkeys.CATALOGUE].current().get(request.match_info["app_id"])
    path = icon_file(app) if app is not None else None
    if path is None:
        raise web.HTTPNotFound(text="no icon")
    return web.Response(body=path.read_bytes()[:MAX_ICON_BYTES], headers=ICON_HEADERS)


# --- the install form ------------------------------------------------------------------------


def _app_or_none(request: web.Request) -> AppEntry | None:
    return request.app[appkeys.CATALOGUE].current().get(request.match_info["app_id"])


def _form_context(
    request: web.Request,
    app: AppEntry,
    *,
    values: dict[str, object] | None = None,
    errors: dict[str, str] | None = None,
    target: str | None = None,
    from_job: str | None = None,
    refusal: str = "",
) -> dict[str, Any]:
    settings = request.app[appkeys.SETTINGS]
    manifest = app.manifest
    views = field_views(manifest, values, errors) if manifest and app.valid else []
    return {
        "appinfo": _card(app),
        "manifest": manifest,
        "views": views,
        "error_links": error_links(views, errors or {}),
        "target": settings.target if target is None else target,
        "default_target": settings.target,
        "target_error": (errors or {}).get(TARGET_FIELD),
        "from_job": from_job,
        "refusal": refusal,
        "has_password": any(view.spec.type == "password" for view in views),
        "may_submit": current_user(request).may(Role.OPERATOR),
    }


@routes.get("/apps/{app_id}", name="app_form")
async def app_form(request: web.Request) -> web.Response:
    """The app's install form, generated from its manifest (`?from=<job>` pre-fills it)."""
    app = _app_or_none(request)
    if app is None:
        return _not_found(request, "app")
    values: dict[str, object] | None = None
    target: str | None = None
    from_job = request.query.get("from", "")
    if from_job and is_job_id(from_job) and app.valid:
        jobs = request.app[appkeys.JOBS]
        job = await jobs.get(from_job)
        if job is not None and job["app_id"] == app.app_id:
            values = await jobs.submitted_inputs(from_job)
            target = job["target"] or None
        else:
            from_job = ""
    else:
        from_job = ""
    if values is None and target is None:  # the blank form: the same for every user of a role
        pages = request.app[appkeys.PAGES]
        return pages.render(
            request,
            "app_form.html",
            lambda: _form_context(request, app),
            key=app.app_id,
            source=app,
        )
    context = _form_context(request, app, values=values, target=target, from_job=from_job or None)
    return _render(request, "app_form.html", context)


def _all_errors(
    manifest: Manifest, inputs: dict[str, Any], known: dict[str, str]
) -> dict[str, str]:
    """Every problem at once: the form's own ones, plus what the core finds in the rest."""
    try:
        validate_inputs(manifest, {name: v for name, v in inputs.items() if name not in known})
    except FormError as error:
        return {**error.errors, **known}
    return dict(known)


async def _submit(
    request: web.Request,
    app: AppEntry,
    inputs: dict[str, Any],
    errors: dict[str, str],
    *,
    user: User,
    target: str,
) -> SubmittedJob:
    """Submit through the job service, unless the form itself already found problems."""
    if errors and app.manifest is not None:
        raise FormError(_all_errors(app.manifest, inputs, errors))
    return await request.app[appkeys.JOBS].submit(app, inputs, user=user.name, target=target)


@routes.post("/apps/{app_id}/install", name="install")
async def install(request: web.Request) -> web.StreamResponse:
    """Validate and queue a job; 303 to its page, or the form again with every error (422)."""
    user: User = current_user(request)
    if not user.may(Role.OPERATOR):
        return _forbidden(request, "install apps")
    app = _app_or_none(request)
    if app is None:
        return _not_found(request, "app")
    if not app.valid or app.manifest is None:
        return _render(request, "app_form.html", _form_context(request, app), status=409)
    form = await request.post()
    if len(form) > MAX_FORM_FIELDS:
        return render_error_page(
            request, 400, "Too many fields", f"A form may send at most {MAX_FORM_FIELDS} fields."
        )
    parsed = parse_install_form(app.manifest, form)
    target = parsed.target or request.app[appkeys.SETTINGS].target
    errors = dict(parsed.errors)
    if not is_valid_target(target):
        errors[TARGET_FIELD] = TARGET_MESSAGE
    metrics = request.app[appkeys.METRICS]
    try:
        job = await _submit(request, app, parsed.inputs, errors, user=user, target=target)
    except FormError as error:
        metrics.submissions.labels(app_id=app.app_id, outcome="invalid").inc()
        context = _form_context(
            request, app, values=dict(parsed.inputs), errors=error.errors, target=target
        )
        return _render(request, "app_form.html", context, status=422)
    except SubmissionRefused as refused:
        metrics.submissions.labels(app_id=app.app_id, outcome="refused").inc()
        # The form again with every answer kept (passwords aside, as after any re-render).
        context = _form_context(
            request, app, values=dict(parsed.inputs), target=target, refusal=refused.message
        )
        response = _render(request, "app_form.html", context, status=429)
        response.headers["Retry-After"] = str(refused.retry_after_s)
        return response
    metrics.submissions.labels(app_id=app.app_id, outcome="accepted").inc()
    raise web.HTTPSeeOther(f"/jobs/{job.job_id}")


# --- one job ---------------------------------------------------------------------------------


def _event_view(event: Event, verification: JobVerification) -> dict[str, Any]:
    return {
        "event": event,
        "problems": [
            problem for event_id, problem in verification.problems if event_id == event.event_id
        ],
        "rows": detail_rows(event.detail),
        "inputs": input_rows(event.detail) if event.trigger == Trigger.SUBMIT else [],
    }


def log_items(lines: list[LogLine]) -> list[tuple[str, Any]]:
    """Log lines with a separator before each attempt's first line."""
    items: list[tuple[str, Any]] = []
    attempt: int | None = None
    for line in lines:
        if line.attempt != attempt:
            attempt = line.attempt
            items.append(("attempt", attempt))
        items.append(("line", line))
    return items


async def _job_or_none(request: web.Request) -> dict[str, Any] | None:
    job_id = request.match_info["job_id"]
    return await request.app[appkeys.JOBS].get(job_id) if is_job_id(job_id) else None


@routes.get("/jobs/{job_id}", name="job")
async def job_page(request: web.Request) -> web.Response:
    """A job's state, timeline and log, kept live by `job.js` over SSE."""
    job = await _job_or_none(request)
    if job is None:
        return _not_found(request, "job")
    jobs = request.app[appkeys.JOBS]
    events, verification = await jobs.verified_timeline(job["job_id"])
    lines = await jobs.log(job["job_id"])
    app = request.app[appkeys.CATALOGUE].current().get(job["app_id"])
    sentence, hint = failure_help(job["reason"])
    context = {
        "job": job,
        "app_name": app.manifest.name if app and app.manifest else job["app_id"],
        "terminal": job["state"] in TERMINAL_STATES,
        "events": [_event_view(event, verification) for event in events],
        "verification": verification,
        "log_items": log_items(lines),
        "last_log_id": lines[-1].id if lines else "",
        "last_attempt": lines[-1].attempt if lines else "",
        "failure_sentence": sentence,
        "failure_hint": hint,
        "may_cancel": current_user(request).may(Role.OPERATOR),
        "rerun_url": (
            f"/apps/{job['app_id']}?{urlencode({'from': job['job_id']})}"
            if app is not None and app.valid and current_user(request).may(Role.OPERATOR)
            else None
        ),
        "texts": texts_for_script(),
    }
    response = _render(request, "job.html", context)
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.get("/jobs/{job_id}/log.txt", name="job_log")
async def job_log_text(request: web.Request) -> web.Response:
    """The whole log as a text file: attempts separated, stderr lines marked."""
    job = await _job_or_none(request)
    if job is None:
        return _not_found(request, "job")
    jobs = request.app[appkeys.JOBS]
    out: list[str] = []
    after = ""
    attempt: int | None = None
    read = 0
    while read < LOG_READ_LIMIT:
        lines = await jobs.log(job["job_id"], after=after)
        if not lines:
            break
        for line in lines:
            if line.attempt != attempt:
                attempt = line.attempt
                out.append(f"----- attempt {attempt} -----")
            out.append(f"[stderr] {line.line}" if line.stream == "stderr" else line.line)
        read += len(lines)
        after = lines[-1].id
    body = "\n".join(out) + ("\n" if out else "")
    return web.Response(
        text=body,
        content_type="text/plain",
        charset="utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="job-{job["job_id"]}.log.txt"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@routes.post("/jobs/{job_id}/cancel", name="job_cancel")
async def cancel_job(request: web.Request) -> web.StreamResponse:
    """Ask for the job to be cancelled, then back to its page (303)."""
    user = current_user(request)
    if not user.may(Role.OPERATOR):
        return _forbidden(request, "cancel jobs")
    job_id = request.match_info["job_id"]
    if not is_job_id(job_id):
        return _not_found(request, "job")
    try:
        state = await request.app[appkeys.JOBS].cancel(job_id, user=user.name)
    except CannotCancel:
        state = "ended"  # nothing to do: the page shows how it ended
    if state is None:
        return _not_found(request, "job")
    raise web.HTTPSeeOther(f"/jobs/{job_id}")


# --- job history -----------------------------------------------------------------------------


def _day(text: str) -> date | None:
    if len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _day_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """The job history's filters as typed in the page's query string."""

    app: str = ""
    state: str = ""
    target: str = ""
    user: str = ""
    since: str = ""
    until: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> HistoryQuery:
        """Read the filters, dropping what cannot be a filter value."""
        state = query.get("state", "")
        return cls(
            app=query.get("app", "").strip()[:64],
            state=state if state in STATES else "",
            target=query.get("target", "").strip()[:64],
            user=query.get("user", "").strip()[:128],
            since=query.get("since", "") if _day(query.get("since", "")) else "",
            until=query.get("until", "") if _day(query.get("until", "")) else "",
        )

    def filters(self) -> JobFilters:
        """The job service's filters; dates are whole UTC days, `until` included."""
        since, until = _day(self.since), _day(self.until)
        return JobFilters(
            app_id=self.app,
            state=self.state,
            target=self.target,
            user=self.user,
            since_ms=_day_ms(since) if since else None,
            until_ms=_day_ms(until + timedelta(days=1)) - 1 if until else None,
        )

    def params(self) -> dict[str, str]:
        """The non-empty filters, to carry into the next page's link."""
        return {
            key: value
            for key, value in (
                ("app", self.app),
                ("state", self.state),
                ("target", self.target),
                ("user", self.user),
                ("since", self.since),
                ("until", self.until),
            )
            if value
        }


@routes.get("/jobs", name="jobs")
async def jobs_page(request: web.Request) -> web.Response:
    """Job history, newest first, with filters and an "Older" link."""
    history = HistoryQuery.from_query(request.query)
    cursor = request.query.get("cursor", "")[:100] or None
    page = await request.app[appkeys.JOBS].listing(
        history.filters(), cursor=cursor, limit=JOBS_PER_PAGE
    )
    catalogue = request.app[appkeys.CATALOGUE].current()
    params = history.params()
    context = {
        "history": history,
        "jobs": page.jobs,
        "states": STATES,
        "app_ids": [app.app_id for app in catalogue.apps],
        "app_names": {
            app.app_id: app.manifest.name for app in catalogue.apps if app.manifest is not None
        },
        "older_url": (
            "/jobs?" + urlencode({**params, "cursor": page.next_cursor})
            if page.next_cursor
            else None
        ),
        "newest_url": ("/jobs?" + urlencode(params) if params else "/jobs") if cursor else None,
        "filtered": bool(params),
    }
    return _render(request, "jobs.html", context)


# --- agents ----------------------------------------------------------------------------------


def _ago(age_ms: int) -> str:
    seconds = max(0, age_ms // 1000)
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def agent_view(beat: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A heartbeat as the agents page shows it: with its age and whether it is stale."""
    last_seen = beat.get("last_seen")
    seen = int(last_seen) if isinstance(last_seen, int | float) else None
    age = now_ms - seen if seen is not None else None

    def texts(name: str) -> list[str]:
        value = beat.get(name)
        return [str(item) for item in value] if isinstance(value, list) else []

    return {
        "agent_id": str(beat.get("agent_id", "")),
        "host": str(beat.get("host", "")),
        "pid": str(beat.get("pid", "")),
        "version": str(beat.get("version", "")),
        "target": str(beat.get("target", "")),
        "apps": texts("apps"),
        "running": texts("running"),
        "last_seen": seen,
        "ago": _ago(age) if age is not None else "never",
        "stale": age is None or age > STALE_AFTER_MS,
        "stopping": beat.get("stopping") is True,
    }


@routes.get("/agents", name="agents")
async def agents_page(request: web.Request) -> web.Response:
    """Every agent's last heartbeat; stale after 15 s of silence."""
    if not current_user(request).may(Role.ADMIN):
        return _forbidden(request, "see agents")
    now_ms = int(time.time() * 1000)
    beats = await request.app[appkeys.JOBS].agents()
    agents = [agent_view(beat, now_ms) for beat in beats]
    return _render(request, "agents.html", {"agents": agents, "now_ms": now_ms})
