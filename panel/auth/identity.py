"""How a request proves who it is: an API token, else the session cookie.

Kept apart from `panel.auth.access` (which decides what an identity may do) because it needs the
stores in Redis; the access middleware receives `authenticate` as a function.

Either way it costs one round trip (`panel.auth.credentials`): the credential and its user are read
together, fresh, on every request.
"""

from __future__ import annotations

from aiohttp import web

from panel import appkeys
from panel.auth.access import Identity, User
from panel.auth.sessions import COOKIE_NAME
from panel.auth.tokens import token_hash, token_shaped


async def authenticate(request: web.Request) -> Identity | None:
    """The identity behind the request's token or cookie, or None."""
    app = request.app
    now_ms = int(app[appkeys.CLOCK]() * 1000)
    authorization = request.headers.get("Authorization", "")
    if not authorization:
        return await _session_identity(request, now_ms)
    scheme, _, value = authorization.partition(" ")
    token = value.strip()
    if scheme.lower() != "bearer" or not token_shaped(token):
        return None
    hashed = token_hash(token)
    tokens = app[appkeys.TOKENS]
    found = await app[appkeys.CREDENTIALS].lookup(tokens.key_of(hashed))
    if found is None or await tokens.accept(hashed, found.fields, now_ms=now_ms) is None:
        return None
    if found.user is None:
        return None  # the user is gone: so is what their tokens could do
    return Identity(user=User(found.user.name, found.user.role), via_token=True)


async def _session_identity(request: web.Request, now_ms: int) -> Identity | None:
    """The identity behind the session cookie."""
    app = request.app
    session_id = request.cookies.get(COOKIE_NAME, "")
    sessions = app[appkeys.SESSIONS]
    key = sessions.key_of(session_id)
    if key is None:
        return None
    found = await app[appkeys.CREDENTIALS].lookup(key)
    if found is None:
        return None
    session = await sessions.accept(session_id, found.fields, now_ms=now_ms)
    if session is None:
        return None
    stored = found.user
    if stored is None or session.created_at < stored.password_changed_at:
        return None  # the user is gone, or changed their password after this login
    return Identity(
        user=User(stored.name, stored.role),
        via_token=False,
        csrf_token=session.csrf_token,
        session_id=session.session_id,
    )
