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

from aiohttp import web

from panel import appkeys
from panel.access import IDENTITY
from panel.page_context import render_page
from panel.ratelimit import Limit
from panel.sessions import COOKIE_NAME

routes = web.RouteTableDef()

WRONG: Final = "Wrong user name or password."


def safe_next(value: str | None) -> str:
    """Only a path on this site: never `//host` or `https://...` (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\\\" in value:
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
    now_s = int(app[appkeys.CLOCK]())
    limiter = app[appkeys.LIMITER]
    per_account, per_address = _limits(request)
    address = request.remote or "unknown"
    for kind, subject, limit in (
        ("login-account", username, per_account),
        ("login-address", address, per_address),
    ):
        verdict = await limiter.blocked(kind, subject, limit, now_s=now_s)
        if not verdict.allowed:
            response = _page(
                request,
                429,
                error=f"Too many failed attempts. Try again in {verdict.retry_after_s} s.",
                username=username,
                next=next_path,
            )
            response.headers["Retry-After"] = str(verdict.retry_after_s)
            return response
    user = await app[appkeys.USERS].authenticate(username, password)
    if user is None:
        await limiter.hit("login-account", username, per_account, now_s=now_s)
        await limiter.hit("login-address", address, per_address, now_s=now_s)
        return _page(request, 401, error=WRONG, username=username, next=next_path)
    await limiter.clear("login-account", username, per_account, now_s=now_s)
    sessions = app[appkeys.SESSIONS]
    old = request.cookies.get(COOKIE_NAME)
    if old:
        await sessions.delete(old)
    session = await sessions.create(user.name, now_ms=now_s * 1000)
    response = web.HTTPSeeOther(next_path)
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
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE_NAME, path="/")
    return response
