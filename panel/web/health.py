"""`/healthz` (the process answers), `/readyz` (Redis answers too), `/metrics` (Prometheus)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from core.keys import RedisKeys
from panel import appkeys
from statemachine.integrations.stream_metrics import (
    StreamStats,
    heartbeat_targets,
    read_stream_stats,
)

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
    """Prometheus text exposition: requests, submissions, jobs by state, queues, groups."""
    states = await request.app[appkeys.JOBS].count_by_state()
    streams = await _stream_stats(request.app)
    body = request.app[appkeys.METRICS].render(states, streams)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _stream_stats(app: web.Application) -> StreamStats:
    """Queues of the panel's own target and of every target an agent heartbeats for."""
    client = app[appkeys.REDIS]
    settings = app[appkeys.SETTINGS]
    keys = RedisKeys(settings.common.namespace)
    targets = await heartbeat_targets(client, keys) | {settings.target}
    return await read_stream_stats(client, keys, targets)
