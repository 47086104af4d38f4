"""Pages rendered once per version of what they show and per role, not on every request.

A blank install form depends on its app (the catalogue entry, which is a new object whenever an
app's files change), on the role of the user (navigation, whether they may submit), and on two
per-request strings: the user's name and the session's CSRF token. The template is rendered
once per (app entry, role) with unguessable markers in place of those two strings, and each
request fills in its own, escaped as the template would have. Authentication and the role
check still happen on every request; only the rendering is shared.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Hashable
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web
from markupsafe import escape

from panel.auth.access import User, csrf_token, current_user
from panel.web.page_context import base_context

MAX_PAGES: Final = 1024


class PageCache:
    """Rendered pages with markers for the user's name and CSRF token, by key and role."""

    def __init__(self) -> None:
        # Fresh per process: no manifest or user can know them, so none can forge a marker.
        self.name_marker = "name-" + secrets.token_hex(16)
        self.csrf_marker = "csrf-" + secrets.token_hex(16)
        self._pages: dict[tuple[Hashable, str], tuple[object, str]] = {}

    def render(
        self,
        request: web.Request,
        template: str,
        context: Callable[[], dict[str, Any]],
        *,
        key: Hashable,
        source: object,
    ) -> web.Response:
        """The page `template` shows for `context()`, rendered again only when `source` (the
        object it is made from) is no longer the one it was rendered from."""
        user = current_user(request)
        cache_key = (key, user.role.value)
        known = self._pages.get(cache_key)
        if known is not None and known[0] is source:
            marked = known[1]
        else:
            marked = aiohttp_jinja2.render_string(
                template,
                request,
                {
                    **base_context(request),
                    **context(),
                    "user": User(self.name_marker, user.role),
                    "csrf_token": self.csrf_marker,
                },
            )
            if len(self._pages) >= MAX_PAGES:
                self._pages.clear()  # only ever (apps x roles) keys: a bound, not a policy
            self._pages[cache_key] = (source, marked)
        text = marked.replace(self.name_marker, str(escape(user.name))).replace(
            self.csrf_marker, str(escape(csrf_token(request)))
        )
        return web.Response(text=text, content_type="text/html", charset="utf-8")
