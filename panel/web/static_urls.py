"""`url('static', filename=...)` in templates, without hashing the file on every page.

aiohttp's static resource (with `append_version`) resolves the path, reads the whole file and
hashes it with SHA-256 on *every* call; a page names four files, which made URL building
about a fifth of the panel's time on the form page. Here each URL is kept with the file's
`stat` (mtime, size, inode), and built again only when that changes, so an edited file still
gets a new version in the very next page.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_jinja2.helpers import url_for
from jinja2.runtime import Context
from yarl import URL

STATIC_ROUTE = "static"

_Stamp = tuple[int, int, int]


class StaticUrls:
    """The versioned URLs of one static folder, each built again when its file changes."""

    def __init__(self, router: web.UrlDispatcher, directory: Path) -> None:
        self._router = router
        self._directory = directory
        self._urls: dict[str, tuple[_Stamp, str]] = {}

    def url(self, filename: str) -> str:
        """`/static/<filename>?v=<hash of its bytes>`, as aiohttp builds it."""
        try:
            info = os.stat(self._directory / filename.lstrip("/"))
            stamp: _Stamp | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except OSError:
            stamp = None  # aiohttp answers a URL without a version; never kept
        known = self._urls.get(filename)
        if stamp is not None and known is not None and known[0] == stamp:
            return known[1]
        built = str(self._router[STATIC_ROUTE].url_for(filename=filename))
        if stamp is not None:
            self._urls[filename] = (stamp, built)
        return built


def install_static_urls(app: web.Application, directory: Path) -> None:
    """Make the templates' `url()` use `StaticUrls` for the static route."""
    static = StaticUrls(app.router, directory)

    @jinja2.pass_context
    def url(
        context: Context, route_name: str, query_: dict[str, str] | None = None, **parts: str | int
    ) -> str | URL:
        if route_name == STATIC_ROUTE and not query_ and set(parts) == {"filename"}:
            return static.url(str(parts["filename"]))
        # aiohttp-jinja2 reads only context["app"], which a jinja2 Context has.
        return url_for(cast(Any, context), route_name, query_, **parts)

    aiohttp_jinja2.get_env(app).globals["url"] = url
