"""What every page's template sees, and the one function that renders a page.

aiohttp-jinja2's context processors run as a middleware that stores the context under a
plain string request key, which aiohttp 3.14 warns about on every process start; rendering
through `render_page` merges the same base context without that middleware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web

from panel.auth.access import Role, csrf_token, optional_user
from panel.web.job_display import iso_time, state_label, utc_text

PRODUCT: Final = "Provision"


def _section(path: str) -> str:
    if path.startswith("/jobs"):
        return "/jobs"
    if path.startswith("/agents"):
        return "/agents"
    return "/"


@dataclass(frozen=True, slots=True)
class NavItem:
    """One entry of the main navigation."""

    href: str
    label: str
    current: bool


def base_context(request: web.Request) -> dict[str, Any]:
    """Values every template sees (nothing here may touch Redis: the 503 page uses it)."""
    user = optional_user(request)
    section = _section(request.path)
    nav = (
        [
            NavItem("/", "Catalogue", section == "/"),
            NavItem("/jobs", "Jobs", section == "/jobs"),
        ]
        if user is not None
        else []
    )
    if user is not None and user.may(Role.ADMIN):
        nav.append(NavItem("/agents", "Agents", section == "/agents"))
    return {
        "product": PRODUCT,
        "user": user,
        "csrf_token": csrf_token(request),
        "nav": nav,
        "request_path": request.path,
        "iso_time": iso_time,
        "utc_text": utc_text,
        "state_label": state_label,
    }


def render_page(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """Render `template` with the base context under the page's own."""
    return aiohttp_jinja2.render_template(
        template, request, {**base_context(request), **context}, status=status
    )
