"""The JSON API under `/api/` (docs/architecture.md §7 and §8). Handlers parse, call the job
service, answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from core.errors import FormError
from core.manifest.model import InputSpec, Manifest
from core.runtime.catalogue import AppEntry
from core.stream_ids import is_stream_id
from core.strict_json import StrictJSONError, strict_loads
from core.validation import MAX_VALUE_BYTES
from panel import appkeys
from panel.auth.access import Role, current_user
from panel.jobs.service import CannotCancel, JobFilters, is_job_id
from panel.jobs.submission_limits import SubmissionRefused
from panel.web.errors import API_HEADERS, json_error
from panel.web.openapi import openapi_document
from statemachine.machine import QUEUED, STATES

routes = web.RouteTableDef()

MAX_JSON_DEPTH: Final = 32
MAX_EPOCH_MS: Final = 9_999_999_999_999_999  # as the OpenAPI document says
_INSTALL_FIELDS: Final = frozenset({"app_id", "inputs", "target"})


def _json(body: object, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, headers=API_HEADERS)


def app_summary(app: AppEntry) -> dict[str, Any]:
    """An app as the catalogue lists it."""
    manifest = app.manifest
    return {
        "id": app.app_id,
        "name": manifest.name if manifest else app.app_id,
        "version": manifest.version if manifest else None,
        "description": manifest.description if manifest else "",
        "category": manifest.category if manifest else None,
        "icon": f"/apps/{app.app_id}/icon" if manifest and manifest.icon else None,
        "valid": app.valid,
        "problems": list(app.problems),
        "fingerprint": app.fingerprint,
    }


def input_view(spec: InputSpec) -> dict[str, Any]:
    """One manifest input as the API describes it."""
    rules = spec.validation
    default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
    return {
        "name": spec.name,
        "type": spec.type,
        "label": spec.label,
        "help": spec.help,
        "required": spec.required,
        "default": None if spec.type == "password" else default,
        "placeholder": spec.placeholder,
        "validation": {
            "pattern": rules.pattern,
            "pattern_message": rules.pattern_message,
            "min_length": rules.min_length,
            "max_length": rules.max_length,
            "min": rules.min,
            "max": rules.max,
            "allowed_values": [
                {"value": value, "label": label} for value, label in rules.allowed_values
            ],
        },
        "visible_if": {name: list(values) for name, values in spec.visible_if.items()},
    }


def manifest_view(manifest: Manifest) -> dict[str, Any]:
    """What a client needs to build the app's form."""
    return {
        "script": manifest.script,
        "timeout": manifest.timeout_s,
        "retry": {
            "max_retries": manifest.retry.max_retries,
            "base_delay": manifest.retry.base_delay_s,
            "factor": manifest.retry.factor,
        },
        "idempotent": manifest.idempotent,
        "verify": manifest.verify is not None,
        "inputs": [input_view(spec) for spec in manifest.inputs],
    }


@routes.get("/api/apps")
async def list_apps(request: web.Request) -> web.Response:
    """Every app, valid or not."""
    catalogue = request.app[appkeys.CATALOGUE].current()
    return _json({"apps": [app_summary(app) for app in catalogue.apps]})


@routes.get("/api/apps/{app_id}")
async def get_app(request: web.Request) -> web.Response:
    """One app with its inputs."""
    app = request.app[appkeys.CATALOGUE].current().get(request.match_info["app_id"])
    if app is None:
        return json_error(404, "no such app")
    body = app_summary(app)
    if app.manifest is not None:
        body.update(manifest_view(app.manifest))
    return _json(body)


class _Malformed(Exception):
    pass


def _depth(value: object, limit: int) -> int:
    stack: list[tuple[object, int]] = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return deepest


def parse_json_body(raw: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object, no duplicate keys, no NaN, bounded depth."""
    try:
        body = strict_loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, StrictJSONError) as error:
        raise _Malformed(f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise _Malformed("the body must be a JSON object")
    if _depth(body, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise _Malformed("the body is nested too deeply")
    return body


def too_many(refused: SubmissionRefused) -> web.Response:
    """The API's answer to a submission over a limit: 429, the limit named, Retry-After."""
    response = json_error(429, refused.message, code="rate_limited")
    response.headers["Retry-After"] = str(refused.retry_after_s)
    return response


@dataclass(frozen=True, slots=True)
class InstallRequest:
    """A parsed `POST /api/install` body."""

    app_id: str
    inputs: dict[str, Any]
    target: str | None


def parse_install_body(raw: bytes) -> InstallRequest:
    """The install body, strictly: only known fields, each of its type, values within limits."""
    body = parse_json_body(raw)
    unknown = sorted(set(body) - _INSTALL_FIELDS)
    if unknown:
        raise _Malformed(f"unknown field(s): {', '.join(unknown)[:200]}")
    app_id, inputs, target = body.get("app_id"), body.get("inputs", {}), body.get("target")
    if not isinstance(app_id, str):
        raise _Malformed("app_id must be a string")
    if not isinstance(inputs, dict):
        raise _Malformed("inputs must be an object")
    if target is not None and not isinstance(target, str):
        raise _Malformed("target must be a string")
    for name, value in inputs.items():
        if isinstance(value, str) and len(value.encode("utf-8", "replace")) > MAX_VALUE_BYTES:
            raise _Malformed(f"the value of {name[:64]!r} is larger than 64 KiB")
    return InstallRequest(app_id=app_id, inputs=inputs, target=target)


@routes.post("/api/install")
async def install(request: web.Request) -> web.Response:
    """Validate, sign and queue a job: 201 with its id."""
    user = current_user(request)
    if not user.may(Role.OPERATOR):
        return json_error(403, "your role may not submit jobs")
    try:
        body = parse_install_body(await request.read())
    except _Malformed as error:
        return json_error(400, str(error))
    app = request.app[appkeys.CATALOGUE].current().get(body.app_id)
    metrics = request.app[appkeys.METRICS]
    if app is None:
        return json_error(404, "no such app")
    if not app.valid:
        return json_error(409, "this app's manifest is invalid: " + "; ".join(app.problems))
    settings = request.app[appkeys.SETTINGS]
    try:
        job = await request.app[appkeys.JOBS].submit(
            app, body.inputs, user=user.name, target=body.target or settings.target
        )
    except FormError as error:
        metrics.submissions.labels(app_id=app.app_id, outcome="invalid").inc()
        return json_error(422, "some inputs are invalid", errors=error.errors)
    except SubmissionRefused as refused:
        metrics.submissions.labels(app_id=app.app_id, outcome="refused").inc()
        return too_many(refused)
    metrics.submissions.labels(app_id=app.app_id, outcome="accepted").inc()
    return _json({"job_id": job.job_id, "state": QUEUED}, status=201)


def _filters(request: web.Request) -> JobFilters:
    query = request.query

    def millis(name: str) -> int | None:
        if name not in query:
            return None
        raw = query[name]
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 32:
            raise _Malformed(f"{name} must be epoch milliseconds")
        value = int(raw)
        if value > MAX_EPOCH_MS:
            raise _Malformed(f"{name} must be epoch milliseconds (at most {MAX_EPOCH_MS})")
        return value

    state = query.get("state", "")
    if "state" in query and state not in STATES:
        raise _Malformed(f"state must be one of {', '.join(STATES)}")
    return JobFilters(
        app_id=query.get("app", "")[:64],
        state=state,
        target=query.get("target", "")[:64],
        user=query.get("user", "")[:128],
        since_ms=millis("since"),
        until_ms=millis("until"),
    )


@routes.get("/api/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    """Jobs newest first, filtered, one page at a time."""
    try:
        filters = _filters(request)
    except _Malformed as error:
        return json_error(400, str(error))
    raw_limit = request.query.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 200:
        return json_error(400, "limit must be a whole number from 1 to 200")
    page = await request.app[appkeys.JOBS].listing(
        filters, cursor=request.query.get("cursor") or None, limit=int(raw_limit)
    )
    return _json({"jobs": page.jobs, "next_cursor": page.next_cursor})


def _job_id(request: web.Request) -> str | None:
    job_id = request.match_info["job_id"]
    return job_id if is_job_id(job_id) else None


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    """One job's snapshot."""
    job_id = _job_id(request)
    job = await request.app[appkeys.JOBS].get(job_id) if job_id else None
    if job is None:
        return json_error(404, "no such job")
    return _json(job)


@routes.get("/api/jobs/{job_id}/events")
async def get_events(request: web.Request) -> web.Response:
    """Every event of one job, in order."""
    job_id = _job_id(request)
    jobs = request.app[appkeys.JOBS]
    if job_id is None or await jobs.get(job_id) is None:
        return json_error(404, "no such job")
    return _json({"events": [event.as_dict() for event in await jobs.events(job_id)]})


@routes.get("/api/jobs/{job_id}/log")
async def get_log(request: web.Request) -> web.Response:
    """The job's output lines (after the stream id `after`, when given)."""
    job_id = _job_id(request)
    jobs = request.app[appkeys.JOBS]
    if job_id is None or await jobs.get(job_id) is None:
        return json_error(404, "no such job")
    after = request.query.get("after", "")
    if "after" in request.query and not is_stream_id(after):
        return json_error(400, "after must be a log line id such as 1700000000000-0")
    lines = await jobs.log(job_id, after=after)
    return _json({"lines": [line.as_dict() for line in lines]})


@routes.post("/api/jobs/{job_id}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    """Ask for a job to be cancelled: 202 with its state, 409 if it already ended."""
    user = current_user(request)
    if not user.may(Role.OPERATOR):
        return json_error(403, "your role may not cancel jobs")
    job_id = _job_id(request)
    if job_id is None:
        return json_error(404, "no such job")
    try:
        state = await request.app[appkeys.JOBS].cancel(job_id, user=user.name)
    except CannotCancel as error:
        return json_error(409, f"the job already {error.state}")
    if state is None:
        return json_error(404, "no such job")
    return _json({"job_id": job_id, "state": state}, status=202)


@routes.get("/api/agents")
async def list_agents(request: web.Request) -> web.Response:
    """Every agent's last heartbeat."""
    if not current_user(request).may(Role.ADMIN):
        return json_error(403, "only admins see agents")
    return _json({"agents": await request.app[appkeys.JOBS].agents()})


@routes.get("/api/openapi.json")
async def openapi(_request: web.Request) -> web.Response:
    """The OpenAPI document of this API."""
    return _json(openapi_document())
