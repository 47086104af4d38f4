"""How a request proves who it is: an API token, else the session cookie.

Kept apart from `panel.access` (which decides what an identity may do) because it needs the
stores in Redis; the access middleware receives `authenticate` as a function.
"""

from __future__ import annotations

from aiohttp import web

from panel import appkeys
from panel.access import Identity, User, is_machine_route
from panel.errors import json_error, render_error_page
from panel.sessions import COOKIE_NAME


async def authenticate(request: web.Request) -> Identity | None:
    """The identity behind the request's token or cookie, or None."""
    app = request.app
    now_ms = int(app[appkeys.CLOCK]() * 1000)
    authorization = request.headers.get("Authorization", "")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        info = await app[appkeys.TOKENS].authenticate(value.strip(), now_ms=now_ms)
        if info is None:
            return None
        owner = await app[appkeys.USERS].get(info.user)
        if owner is None:
            return None  # the user is gone: so is what their tokens could do
        return Identity(user=User(owner.name, owner.role), via_token=True)
    session_id = request.cookies.get(COOKIE_NAME, "")
    if not session_id:
        return None
    session = await app[appkeys.SESSIONS].get(session_id, now_ms=now_ms)
    if session is None:
        return None
    stored = await app[appkeys.USERS].get(session.user)
    if stored is None or session.created_at < stored.password_changed_at:
        return None  # the user is gone, or changed their password after this login
    return Identity(
        user=User(stored.name, stored.role),
        via_token=False,
        csrf_token=session.csrf_token,
        session_id=session.session_id,
    )


def refuse(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """A refusal in the request's language: JSON for the API, a page for browsers."""
    if is_machine_route(request.path):
        response = json_error(status, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="provision"'
        return response
    titles = {401: "Please log in", 403: "Not allowed", 429: "Too many attempts"}
    return render_error_page(request, status, titles.get(status, "Refused"), message)
