"""`/login` and `/logout`: browser sessions.

The login form answers a wrong password and an unknown user with the same words, the same
status and the same work (an argon2 verification either way), so it tells no one which
accounts exist. Failed attempts are counted per account and per client address in Redis;
past the limit the form answers 429 with `Retry-After` until the window ends. A successful
login always creates a new session (and drops the old one), so a session id planted before
login is never promoted.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

from panel import appkeys
from panel.access import IDENTITY
from panel.page_context import render_page
from panel.ratelimit import Limit
from panel.sessions import COOKIE_NAME

routes = web.RouteTableDef()

WRONG: Final = "Wrong user name or password."


def safe_next(value: str | None) -> str:
    """Only a path on this site: never `//host`, `https://...`, nor a whitespace trick.

    Browsers and HTTP libraries drop tabs and newlines from a Location, so a slash, a tab and
    `/evil` would become `//evil`: anything but printable ASCII without backslashes is
    refused.
    """
    if (
        not value
        or not value.startswith("/")
        or value.startswith("//")
        or len(value) > 2000
        or any(not ("!" <= char <= "~") or char == "\\" for char in value)
    ):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def _limits(request: web.Request) -> tuple[Limit, Limit]:
    settings = request.app[appkeys.SETTINGS]
    window = settings.login_window_s
    return (
        Limit(settings.login_failures_per_account, window),
        Limit(settings.login_failures_per_address, window),
    )


def _page(request: web.Request, status: int, **context: object) -> web.Response:
    return render_page(
        request,
        "login.html",
        {"next": safe_next(request.query.get("next")), "error": "", "username": "", **context},
        status=status,
    )


@routes.get("/login")
async def login_form(request: web.Request) -> web.Response:
    """The login form."""
    return _page(request, 200)


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    """Check the credentials; on success a fresh session and a redirect to `next`."""
    form = await request.post()
    username = str(form.get("username", ""))[:200].strip().lower()
    password = str(form.get("password", ""))
    next_path = safe_next(str(form.get("next", "")))
    app = request.app
    now = app[appkeys.CLOCK]()
    now_s = int(now)
    limiter = app[appkeys.LIMITER]
    per_account, per_address = _limits(request)
    address = request.remote or "unknown"
    # Count the attempt before checking it (one atomic INCR each), so parallel guesses can
    # never get past the limit while earlier ones are still being verified.
    attempts = (
        ("login-account", username, per_account),
        ("login-address", address, per_address),
    )
    verdicts = [
        await limiter.hit(kind, subject, limit, now_s=now_s) for kind, subject, limit in attempts
    ]
    refused = [verdict for verdict in verdicts if not verdict.allowed]
    if refused:
        retry_after = max(verdict.retry_after_s for verdict in refused)
        response = _page(
            request,
            429,
            error=f"Too many failed attempts. Try again in {retry_after} s.",
            username=username,
            next=next_path,
        )
        response.headers["Retry-After"] = str(retry_after)
        return response
    user = await app[appkeys.USERS].authenticate(username, password)
    if user is None:
        return _page(request, 401, error=WRONG, username=username, next=next_path)
    # A success is not a failure: take it off both counts.
    await limiter.clear("login-account", username, per_account, now_s=now_s)
    await limiter.undo("login-address", address, per_address, now_s=now_s)
    sessions = app[appkeys.SESSIONS]
    old = request.cookies.get(COOKIE_NAME)
    if old:
        await sessions.delete(old)
    session = await sessions.create(user.name, now_ms=int(now * 1000))
    response = web.Response(status=303, headers={"Location": next_path})
    response.set_cookie(
        COOKIE_NAME,
        session.session_id,
        httponly=True,
        samesite="Lax",
        secure=app[appkeys.SETTINGS].cookie_secure,
        path="/",
        max_age=app[appkeys.SETTINGS].session_max_s,
    )
    return response


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    """End the session and go back to the login form."""
    identity = request.get(IDENTITY)
    if identity is not None and identity.session_id:
        await request.app[appkeys.SESSIONS].delete(identity.session_id)
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(COOKIE_NAME, path="/")
    return response
