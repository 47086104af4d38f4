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
from panel.credentials import CredentialLookup
from panel.jobs import JobService
from panel.metrics import PanelMetrics
from panel.page_cache import PageCache
from panel.ratelimit import RateLimiter
from panel.sessions import SessionStore
from panel.tokens import TokenStore
from panel.users import UserStore

SETTINGS = web.AppKey("settings", PanelSettings)
USERS = web.AppKey("users", UserStore)
TOKENS = web.AppKey("tokens", TokenStore)
SESSIONS = web.AppKey("sessions", SessionStore)
CREDENTIALS = web.AppKey("credentials", CredentialLookup)
LIMITER = web.AppKey("limiter", RateLimiter)
# Wall clock in epoch seconds; tests replace it to move time (session expiry, rate windows).
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
REDIS = web.AppKey("redis", aioredis.Redis)
RingSource = Callable[[], KeyRing]
RING: web.AppKey[RingSource] = web.AppKey("ring")
CATALOGUE = web.AppKey("catalogue", CatalogueCache)
PAGES = web.AppKey("pages", PageCache)
JOBS = web.AppKey("jobs", JobService)
METRICS = web.AppKey("metrics", PanelMetrics)
# Open SSE responses, closed on shutdown so a stop never waits for idle browsers.
STREAMS: web.AppKey[weakref.WeakSet[EventSourceResponse]] = web.AppKey("streams")
