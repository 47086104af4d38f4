"""`/healthz` (the process answers), `/readyz` (Redis answers too), `/metrics` (Prometheus)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from panel import appkeys

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(_request: web.Request) -> web.Response:
    """Alive: the event loop answers."""
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready: Redis answers, so submissions can be stored."""
    try:
        await request.app[appkeys.REDIS].ping()
    except (RedisError, OSError) as error:
        return web.json_response({"status": "unavailable", "redis": str(error)[:200]}, status=503)
    return web.json_response({"status": "ok", "redis": "ok"})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition: requests, submissions, jobs by state."""
    states = await request.app[appkeys.JOBS].count_by_state()
    body = request.app[appkeys.METRICS].render(states)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
