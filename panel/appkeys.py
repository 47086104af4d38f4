"""Typed keys of everything the panel application holds."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from core.keyring import KeyRing
from core.settings import PanelSettings
from panel.catalogue_cache import CatalogueCache
from panel.jobs import JobService
from panel.metrics import PanelMetrics

SETTINGS = web.AppKey("settings", PanelSettings)
REDIS = web.AppKey("redis", aioredis.Redis)
RingSource = Callable[[], KeyRing]
RING: web.AppKey[RingSource] = web.AppKey("ring")
CATALOGUE = web.AppKey("catalogue", CatalogueCache)
JOBS = web.AppKey("jobs", JobService)
METRICS = web.AppKey("metrics", PanelMetrics)
# Open SSE responses, closed on shutdown so a stop never waits for idle browsers.
STREAMS: web.AppKey[weakref.WeakSet[EventSourceResponse]] = web.AppKey("streams")
