"""How a request proves who it is: an API token, else the session cookie.

Kept apart from `panel.access` (which decides what an identity may do) because it needs the
stores in Redis; the access middleware receives `authenticate` as a function.

Either way it costs one round trip (`panel.credentials`): the credential and its user are read
together, fresh, on every request. A route may also have a *charge*: a rate-limited event
(a submission) that the same round trip counts once the token is known to allow the request.
Its preparation reads the request body before the token is checked, so it runs only for a
token that has already authenticated in this process; any other request is authenticated
first and counted by its handler, as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import web

from panel import appkeys
from panel.access import Identity, Role, User, is_machine_route, route_permission
from panel.errors import json_error, render_error_page
from panel.ratelimit import Charge, Verdict
from panel.sessions import COOKIE_NAME
from panel.tokens import token_hash, token_shaped

# What a charged route's handler finds when the authenticating round trip counted its event.
CHARGE_VERDICT = web.RequestKey("charge_verdict", Verdict)
# Hashes (never tokens) of tokens that authenticated here lately: a hint of whose request
# bodies are worth reading before the check, never a grant of anything.
KNOWN_TOKENS_MAX: Final = 10_000

Prepare = Callable[[web.Request], Awaitable[Charge | None]]
Authenticate = Callable[[web.Request], Awaitable[Identity | None]]


def make_authenticate(charged: Mapping[tuple[str, str], Prepare]) -> Authenticate:
    """`authenticate(request)`; `charged` maps (method, route pattern) to its preparation."""
    known_tokens: dict[str, None] = {}

    def remember(hashed: str) -> None:
        known_tokens[hashed] = None
        if len(known_tokens) > KNOWN_TOKENS_MAX:
            del known_tokens[next(iter(known_tokens))]

    async def charge_of(request: web.Request, hashed: str) -> tuple[Charge | None, list[Role]]:
        resource = request.match_info.route.resource
        prepare = charged.get((request.method, resource.canonical)) if resource else None
        permission = route_permission(request)
        needed = permission.role if permission is not None else None
        if prepare is None or needed is None or hashed not in known_tokens:
            return None, []
        charge = await prepare(request)
        counted = [role for role in Role if User("", role).may(needed)]
        return charge, counted

    async def authenticate(request: web.Request) -> Identity | None:
        """The identity behind the request's token or cookie, or None."""
        app = request.app
        now_ms = int(app[appkeys.CLOCK]() * 1000)
        credentials = app[appkeys.CREDENTIALS]
        authorization = request.headers.get("Authorization", "")
        if authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip()
            if scheme.lower() != "bearer" or not token_shaped(token):
                return None
            hashed = token_hash(token)
            tokens = app[appkeys.TOKENS]
            charge, counted = await charge_of(request, hashed)
            found = await credentials.lookup(
                tokens.key_of(hashed), now_ms=now_ms, charge=charge, counted_roles=counted
            )
            if found is None or await tokens.accept(hashed, found.fields, now_ms=now_ms) is None:
                known_tokens.pop(hashed, None)
                return None
            if found.user is None:
                known_tokens.pop(hashed, None)
                return None  # the user is gone: so is what their tokens could do
            remember(hashed)
            if found.verdict is not None:
                request[CHARGE_VERDICT] = found.verdict
            return Identity(user=User(found.user.name, found.user.role), via_token=True)
        return await _session_identity(request, now_ms)

    return authenticate


async def _session_identity(request: web.Request, now_ms: int) -> Identity | None:
    """The identity behind the session cookie (never charged: CSRF is checked after it)."""
    app = request.app
    session_id = request.cookies.get(COOKIE_NAME, "")
    sessions = app[appkeys.SESSIONS]
    key = sessions.key_of(session_id)
    if key is None:
        return None
    found = await app[appkeys.CREDENTIALS].lookup(key, now_ms=now_ms)
    if found is None:
        return None
    session = await sessions.accept(session_id, key, found.fields, now_ms=now_ms)
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


def refuse(request: web.Request, status: int, message: str) -> web.StreamResponse:
    """A refusal in the request's language: JSON for the API, a page for browsers."""
    if is_machine_route(request.path):
        response = json_error(status, message)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="provision"'
        return response
    titles = {401: "Please log in", 403: "Not allowed", 429: "Too many attempts"}
    return render_error_page(request, status, titles.get(status, "Refused"), message)
