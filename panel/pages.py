"""HTML pages (placeholder until the pages land in this same change)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

routes = web.RouteTableDef()


async def base_context(request: web.Request) -> dict[str, Any]:
    """Values every template sees."""
    del request
    return {}
