"""The `Host` allow-list: a request whose `Host` is not one of the panel's own names gets 400,
so a DNS-rebinding page (its own name, resolved to this machine) reaches nothing.

The names: `PROV_PANEL_ALLOWED_HOSTS`, a comma-separated list of `host` or `host:port` entries
(`[v6]` or `[v6]:port` for IPv6), compared case-insensitively (IP addresses in canonical
form, one trailing dot ignored). Unset, the list is the bind address (`PROV_PANEL_HOST`),
`localhost`, `127.0.0.1` and `[::1]`, plus the address the connection arrived at (the bind
address even when `provision panel --host` overrides the setting, or the interface's own
address when the panel binds to `0.0.0.0`). A list that is set replaces that default: name
the loopback names too if local clients use them.

The ports:

- An entry without a port allows the port the connection arrived at (the panel's real
  listening port, read from the socket, so `provision panel --port` and a test server's random
  port need no setting; `PROV_PANEL_PORT` when the socket tells none) and a `Host` without a
  port (what a reverse proxy passes for `https://panel.example.com`).
- An entry with a port allows exactly that port; a `Host` without a port counts as port 80
  or 443 (the browser dropped the scheme's default).

Why this is safe: a rebinding page can choose the address its name resolves to, never the
name the browser puts in `Host`, which stays the page's own (`evil.example:8080`). The
name is the defence; the port check only keeps the list honest. The loopback names and the
local address are IP literals or names no outsider's DNS controls.

`/healthz` and `/readyz` are exempt: they change nothing, carry no user data (a status, and
Redis's error when it is down), and load balancers, container probes and `provision up`'s own
readiness poll address the panel by whatever IP or internal name they know it by.

The refusal is plain: JSON in the stable shape for `/api/`, a short HTML page otherwise, and
nothing of the request is carried out (this middleware runs before every other one).
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Final

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware

from core.runtime.settings import HostEntry, PanelSettings, normalise_host_name, parse_host
from panel.web.errors import Handler, is_api, json_error

log = structlog.get_logger("panel")

EXEMPT_PATHS: Final = frozenset({"/healthz", "/readyz"})
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")
DEFAULT_PORTS: Final = frozenset({80, 443})


def default_hosts(bind_host: str) -> tuple[HostEntry, ...]:
    """The bind address and the loopback names, each without a port (the panel's port)."""
    names = [normalise_host_name(name) for name in (bind_host, *LOOPBACK_NAMES)]
    return tuple(dict.fromkeys((name, None) for name in names if name is not None))


def host_allowed(host: str | None, allowed: Iterable[HostEntry], *, local_port: int) -> bool:
    """Whether the `Host` header value `host` names one of `allowed` (module docstring)."""
    if host is None:
        return False
    parsed = parse_host(host)
    if parsed is None:
        return False
    name, port = parsed
    for allowed_name, allowed_port in allowed:
        if allowed_name != name:
            continue
        if allowed_port is None and port in (None, local_port):
            return True
        if allowed_port is not None and (
            port == allowed_port or (port is None and allowed_port in DEFAULT_PORTS)
        ):
            return True
    return False


def _local_address(request: web.Request, fallback_port: int) -> tuple[str | None, int]:
    """The address and port the connection arrived at (IPv6 scope dropped)."""
    transport = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2 and isinstance(sockname[1], int):
        address = str(sockname[0]).partition("%")[0]
        return normalise_host_name(address), sockname[1]
    return None, fallback_port


PAGE: Final = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
    "<title>400 Unknown host</title></head><body><h1>Unknown host</h1><p>{message}</p>"
    "</body></html>\n"
)


def _refusal(request: web.Request, host: str | None) -> web.Response:
    shown = (host or "")[:200]
    message = (
        f"this panel does not answer to the host {shown!r}; "
        "an administrator can add it to PROV_PANEL_ALLOWED_HOSTS"
        if host
        else "the request names no host (a Host header is required)"
    )
    if is_api(request):
        return json_error(400, message)
    return web.Response(
        status=400,
        text=PAGE.format(message=html.escape(message)),
        content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


def make_host_middleware(settings: PanelSettings) -> Middleware:
    """The middleware enforcing the allow-list of `settings` (first of the panel's list)."""
    configured = settings.allowed_hosts

    @web.middleware
    async def host_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in EXEMPT_PATHS:
            return await handler(request)
        address, port = _local_address(request, settings.port)
        if configured is not None:
            allowed: tuple[HostEntry, ...] = configured
        else:
            allowed = default_hosts(settings.host)
            if address is not None:
                allowed = (*allowed, (address, None))
        host = request.headers.get("Host")
        if host_allowed(host, allowed, local_port=port):
            return await handler(request)
        log.warning("panel.host_refused", host=(host or "")[:200], path=request.path[:200])
        return _refusal(request, host)

    return host_middleware
