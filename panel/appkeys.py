"""Typed keys of everything the panel application holds."""

from __future__ import annotations

import weakref
from collections.abc import Callable

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from core.keyring import KeyRing
from core.runtime.settings import PanelSettings
from panel.auth.credentials import CredentialLookup
from panel.auth.ratelimit import RateLimiter
from panel.auth.sessions import SessionStore
from panel.auth.tokens import TokenStore
from panel.auth.users import UserStore
from panel.jobs.catalogue_cache import CatalogueCache
from panel.jobs.service import JobService
from panel.web.metrics import PanelMetrics
from panel.web.page_cache import PageCache

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
