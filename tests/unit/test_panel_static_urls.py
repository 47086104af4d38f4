"""Static URLs are built once per file version, and a changed file gets a new version."""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from panel.web.static_urls import StaticUrls


def static_app(folder: Path) -> web.Application:
    app = web.Application()
    app.router.add_static("/static", folder, name="static", append_version=True)
    return app


def aiohttp_url(app: web.Application, filename: str) -> str:
    return str(app.router["static"].url_for(filename=filename))


def test_a_static_url_is_the_one_aiohttp_builds_with_the_files_hash(tmp_path):
    (tmp_path / "css").mkdir()
    (tmp_path / "css" / "app.css").write_text("body { color: red }")
    app = static_app(tmp_path)
    urls = StaticUrls(app.router, tmp_path)
    assert urls.url("css/app.css") == aiohttp_url(app, "css/app.css")
    assert urls.url("css/app.css").startswith("/static/css/app.css?v=")


def test_a_changed_file_gets_a_new_version_in_the_next_url(tmp_path):
    path = tmp_path / "app.js"
    path.write_text("one();")
    app = static_app(tmp_path)
    urls = StaticUrls(app.router, tmp_path)
    first = urls.url("app.js")
    path.write_text("two();")  # same size: the modification time tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    second = urls.url("app.js")
    assert second != first
    assert second == aiohttp_url(app, "app.js")


def test_a_missing_file_gets_a_plain_url_until_it_exists(tmp_path):
    app = static_app(tmp_path)
    urls = StaticUrls(app.router, tmp_path)
    assert urls.url("late.css") == "/static/late.css"
    (tmp_path / "late.css").write_text("p {}")
    assert urls.url("late.css") == aiohttp_url(app, "late.css")
    assert "?v=" in urls.url("late.css")
