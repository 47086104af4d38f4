"""Security headers on every answer (docs/architecture.md §7 access, issue 5).

A strict Content-Security-Policy: scripts and styles only from our own `/static`, no inline
script, no framing, forms only to ourselves. Job pages and API answers are never cached
(they can change any second and carry job details). A handler that set its own policy (the
app icons, which get `default-src 'none'`) keeps it.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)

BASE_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare` hook: every answer gets the headers, streams and errors too."""
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    for name, value in BASE_HEADERS.items():
        headers.setdefault(name, value)
    path = request.path
    if not path.startswith("/static/") and not path.endswith("/icon"):
        headers["Cache-Control"] = "no-store"
