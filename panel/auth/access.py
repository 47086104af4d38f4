"""Who is asking, and may they: authentication, the route permission table, CSRF.

Every route has an explicit permission in `ROUTE_PERMISSIONS`; a route missing from it is
refused (fail closed) and a test walks the app's routes against the table, so no route can
ship open by accident. Health, login and static assets are the only public routes.

A request is authenticated by an `Authorization: Bearer` API token, else by the session
cookie. State-changing requests that ride on the cookie must come from our own origin
(`Origin` / `Sec-Fetch-Site`) and carry the session's CSRF token (form field `_csrf` or the
`X-CSRF-Token` header); bearer-token requests are exempt, since no browser sends them by
itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final
from urllib.parse import quote, urlsplit

import structlog
from aiohttp import web

log = structlog.get_logger("panel.auth.access")


class Role(StrEnum):
    """docs/architecture.md §7's three roles, each allowed what the previous is and more."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class Permission(Enum):
    """What a route needs."""

    PUBLIC = "public"
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def role(self) -> Role | None:
        """The least role that passes (None: no login needed)."""
        return None if self is Permission.PUBLIC else Role(self.value)


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated user and their role."""

    name: str
    role: Role

    def may(self, needed: Role) -> bool:
        """Whether this user's role includes `needed`."""
        return _RANK[self.role] >= _RANK[needed]


@dataclass(frozen=True, slots=True)
class Identity:
    """How the request authenticated: the user, and the session when by cookie."""

    user: User
    via_token: bool
    csrf_token: str = ""
    session_id: str = ""


IDENTITY = web.RequestKey("identity", Identity)

P = Permission
# (method, route pattern) -> permission. HEAD follows GET.
ROUTE_PERMISSIONS: Final[dict[tuple[str, str], Permission]] = {
    ("GET", "/healthz"): P.PUBLIC,
    ("GET", "/readyz"): P.PUBLIC,
    ("GET", "/login"): P.PUBLIC,
    ("POST", "/login"): P.PUBLIC,
    ("GET", "/static"): P.PUBLIC,
    ("POST", "/logout"): P.VIEWER,
    ("GET", "/"): P.VIEWER,
    ("GET", "/apps/{app_id}"): P.VIEWER,
    ("GET", "/apps/{app_id}/icon"): P.VIEWER,
    ("POST", "/apps/{app_id}/install"): P.OPERATOR,
    ("GET", "/jobs"): P.VIEWER,
    ("GET", "/jobs/{job_id}"): P.VIEWER,
    ("GET", "/jobs/{job_id}/log.txt"): P.VIEWER,
    ("POST", "/jobs/{job_id}/cancel"): P.OPERATOR,
    ("GET", "/agents"): P.ADMIN,
    ("GET", "/metrics"): P.ADMIN,
    ("GET", "/api/openapi.json"): P.VIEWER,
    ("GET", "/api/apps"): P.VIEWER,
    ("GET", "/api/apps/{app_id}"): P.VIEWER,
    ("POST", "/api/install"): P.OPERATOR,
    ("GET", "/api/jobs"): P.VIEWER,
    ("GET", "/api/jobs/{job_id}"): P.VIEWER,
    ("GET", "/api/jobs/{job_id}/events"): P.VIEWER,
    ("GET", "/api/jobs/{job_id}/log"): P.VIEWER,
    ("GET", "/api/jobs/{job_id}/stream"): P.VIEWER,
    ("POST", "/api/jobs/{job_id}/cancel"): P.OPERATOR,
    ("GET", "/api/agents"): P.ADMIN,
}

STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD: Final = "_csrf"
CSRF_HEADER: Final = "X-CSRF-Token"


def route_permission(request: web.Request) -> Permission | None:
    """The permission of the matched route; None for a route missing from the table."""
    resource = request.match_info.route.resource
    if resource is None:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    return ROUTE_PERMISSIONS.get((method, resource.canonical))


def optional_user(request: web.Request) -> User | None:
    """The authenticated user, if any."""
    identity = request.get(IDENTITY)
    return identity.user if identity is not None else None


def current_user(request: web.Request) -> User:
    """The authenticated user of a protected route (the middleware guarantees one)."""
    user = optional_user(request)
    if user is None:
        raise web.HTTPUnauthorized(text="not logged in")
    return user


def csrf_token(request: web.Request) -> str:
    """The CSRF token to put in this page's forms ("" when not logged in)."""
    identity = request.get(IDENTITY)
    return identity.csrf_token if identity is not None else ""


def same_origin(request: web.Request) -> bool:
    """Whether a state-changing browser request comes from our own pages."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not a cross-origin browser request: browsers send Origin on those
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc == request.host


async def submitted_csrf_token(request: web.Request) -> str:
    """The CSRF token sent with a request: the header, else the form field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    if request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        value = form.get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


def is_machine_route(path: str) -> bool:
    """Routes read by programs (the API, Prometheus): refused with 401, never sent to /login."""
    return path.startswith("/api/") or path == "/metrics"


def login_redirect(request: web.Request) -> web.HTTPSeeOther:
    """Where an anonymous browser is sent: the login page, coming back here after."""
    return web.HTTPSeeOther(f"/login?next={quote(request.path_qs, safe='')}")


Authenticator = Callable[[web.Request], Awaitable[Identity | None]]
Refusal = Callable[[web.Request, int, str], web.StreamResponse]


def make_access_middleware(
    authenticate: Authenticator, refuse: Refusal
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware: permission lookup, authentication, role check, origin and CSRF."""

    @web.middleware
    async def access_middleware(
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        if request.match_info.http_exception is not None:
            return await handler(request)  # no such route / method: aiohttp's 404 or 405
        permission = route_permission(request)
        if permission is None:
            log.error("access.route_without_permission", path=request.path)
            return refuse(request, 403, "this route has no permission set, so it is closed")
        # Public routes never need to know who asks (and health must answer without Redis).
        identity = None if permission is Permission.PUBLIC else await authenticate(request)
        if identity is not None:
            request[IDENTITY] = identity
        state_changing = request.method in STATE_CHANGING
        cookie_borne = identity is not None and not identity.via_token
        if state_changing and (cookie_borne or identity is None) and not same_origin(request):
            return refuse(request, 403, "cross-site request refused")
        needed = permission.role
        if needed is None:
            return await handler(request)
        if identity is None:
            if request.method in ("GET", "HEAD") and not is_machine_route(request.path):
                raise login_redirect(request)
            return refuse(request, 401, "log in first (or send an API token)")
        if not identity.user.may(needed):
            return refuse(request, 403, f"your role ({identity.user.role}) may not do this")
        if state_changing and cookie_borne:
            sent = await submitted_csrf_token(request)
            if not sent or not hmac.compare_digest(
                sent.encode("utf-8", "replace"), identity.csrf_token.encode()
            ):
                return refuse(request, 403, "missing or wrong CSRF token; reload the page")
        return await handler(request)

    return access_middleware
