"""The agent's `/metrics` over HTTP, on `PROV_AGENT_METRICS_ADDR` (off by default).

It has no authentication, like most exporters: keep it on loopback, or behind a proxy that
authenticates. Each scrape reads the queue gauges of the agent's own target (and the retry set
and the integration groups) from Redis first; when Redis does not answer, the agent's own
counters are still served and the stream gauges are left out.
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Final

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from agent.metrics import AgentMetrics
from core.keys import RedisKeys
from statemachine.integrations.stream_metrics import StreamStats, read_stream_stats

log = structlog.get_logger("agent.metrics")

# A scrape must answer even when Redis hangs; Prometheus' own default timeout is 10 s.
STREAM_READ_TIMEOUT_S: Final = 5.0


async def start_metrics_server(
    metrics: AgentMetrics,
    client: aioredis.Redis,
    keys: RedisKeys,
    target: str,
    *,
    host: str,
    port: int,
) -> web.AppRunner:
    """Serve `GET /metrics` on host:port until the returned runner is cleaned up."""

    async def scrape(_request: web.Request) -> web.Response:
        streams = await _read_streams(client, keys, target)
        body = metrics.render(streams)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError:
        await runner.cleanup()
        raise
    if not _is_loopback(host):
        log.warning("agent.metrics_exposed", host=host, port=port, problem="no authentication")
    log.info("agent.metrics_listening", host=host, port=port)
    return runner


async def _read_streams(client: aioredis.Redis, keys: RedisKeys, target: str) -> StreamStats | None:
    try:
        return await asyncio.wait_for(
            read_stream_stats(client, keys, [target]), STREAM_READ_TIMEOUT_S
        )
    except (RedisError, OSError, TimeoutError) as error:
        log.warning("agent.metrics_streams_unavailable", error=str(error))
        return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
