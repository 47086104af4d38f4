"""Error answers with one stable JSON shape (docs/architecture.md §8), and the middleware that
guarantees it.

`{"error": "<code>", "message": "...", "errors": {field: message}?}`. API routes always get
JSON; pages get an HTML error page. Redis being unreachable, or out of memory and refusing
writes (`maxmemory` reached under `noeviction`), is a 503 (`unavailable`), never a 500; any
other unexpected error is logged and answered 500 without internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from panel.auth.access import is_machine_route
from panel.web.page_context import render_page

log = structlog.get_logger("panel")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CODES = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_inputs",
    429: "rate_limited",
    503: "unavailable",
}

API_HEADERS = {"Cache-Control": "no-store"}


def json_error(
    status: int,
    message: str,
    *,
    code: str | None = None,
    errors: Mapping[str, str] | None = None,
) -> web.Response:
    """A JSON error answer in the stable shape."""
    body: dict[str, object] = {"error": code or _CODES.get(status, "error"), "message": message}
    if errors:
        body["errors"] = dict(errors)
    return web.json_response(body, status=status, headers=API_HEADERS)


def is_api(request: web.Request) -> bool:
    """Whether the request is for the JSON API (which always answers JSON)."""
    return request.path.startswith("/api/")


def render_error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    """The HTML error page (template `error.html`: status, title, message)."""
    return render_page(
        request, "error.html", {"status": status, "title": title, "message": message}, status=status
    )


REDIS_DOWN = "the job store (Redis) is unreachable; nothing was changed, try again shortly"
# Redis refuses the first write of a command or script once maxmemory is reached, so the
# refused step wrote nothing (a job is stored whole or not at all).
REDIS_FULL = (
    "the job store (Redis) is out of memory and refuses new writes; this request was not "
    "carried out, try again once an administrator has freed memory or raised maxmemory"
)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the right status and shape; never leak a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if not is_api(request) or error.status < 400:
            raise
        message = error.text or error.reason
        if error.status == 413:
            message = "the request body is larger than the limit (1 MiB)"
        response = json_error(error.status, message or error.reason)
        for name, value in error.headers.items():
            # Keep what the status needs (Allow on a 405, Location on a redirect...).
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response
    except (RedisConnectionError, RedisTimeoutError, ConnectionError) as error:
        log.warning("panel.redis_unavailable", path=request.path, error=str(error))
        if is_api(request):
            return json_error(503, REDIS_DOWN)
        return render_error_page(request, 503, "The job store is unavailable", REDIS_DOWN)
    except RedisOutOfMemoryError as error:
        log.warning("panel.redis_out_of_memory", path=request.path, error=str(error))
        if is_api(request):
            return json_error(503, REDIS_FULL)
        return render_error_page(request, 503, "The job store is full", REDIS_FULL)
    except Exception:
        log.exception("panel.crashed", path=request.path)
        if is_api(request):
            return json_error(500, "internal error", code="internal")
        raise web.HTTPInternalServerError(text="internal error") from None


def refuse(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """A refusal by the access middleware in the request's language: JSON for the API, a page
    for browsers."""
    if is_machine_route(request.path):
        response = json_error(status, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="provision"'
        return response
    titles = {401: "Please log in", 403: "Not allowed", 429: "Too many attempts"}
    return render_error_page(request, status, titles.get(status, "Refused"), message)
