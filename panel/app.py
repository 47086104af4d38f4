"""The panel application, built by one factory.

`create_app(settings)` wires everything: the job store on Redis, the key ring (re-read when
the key file changes), the catalogue cache, templates, static files, the routes, and the
middlewares (the `Host` allow-list, errors, metrics; access control plugs in at
`panel.auth.access`). Every resource is opened and closed in one `cleanup_ctx` generator; open
SSE streams are closed on shutdown.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import aiohttp_jinja2
import jinja2
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp_sse import EventSourceResponse

from core.errors import KeyRingError
from core.keyring import KeyRing
from core.keys import RedisKeys
from core.runtime.keyring_file import KeyRingFile
from core.runtime.redis_conn import check_durability
from core.runtime.settings import PanelSettings, redis_url_or_local
from core.validation import MAX_REQUEST_BYTES
from panel import appkeys
from panel.auth.access import make_access_middleware
from panel.auth.credentials import CredentialLookup
from panel.auth.identity import authenticate
from panel.auth.ratelimit import RateLimiter
from panel.auth.sessions import SessionStore
from panel.auth.tokens import TokenStore
from panel.auth.users import UserStore
from panel.jobs.catalogue_cache import CatalogueCache
from panel.jobs.service import JobService
from panel.jobs.submission_limits import SubmissionLimits
from panel.web import api, health, login, pages
from panel.web.errors import Handler, error_middleware, refuse
from panel.web.headers import add_security_headers
from panel.web.hosts import make_host_middleware
from panel.web.metrics import PanelMetrics
from panel.web.page_cache import PageCache
from panel.web.sse import stream_job
from panel.web.static_urls import install_static_urls
from statemachine.store import EventStore

log = structlog.get_logger("panel")

PACKAGE_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = PACKAGE_DIR / "static"
TEMPLATES_DIR: Final = PACKAGE_DIR / "templates"
SOCKET_TIMEOUT_S: Final = 10.0

RingSource = Callable[[], KeyRing]


def keys_file_of(settings: PanelSettings) -> Path:
    """PROV_HMAC_KEYS_FILE, else the data folder's `hmac.keys`."""
    common = settings.common
    return common.hmac_keys_file or common.data_dir / "hmac.keys"


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route pattern (never by raw path: ids would explode labels)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
    except web.HTTPException as error:
        status = error.status
        raise
    else:
        status = response.status
        return response
    finally:
        route = request.match_info.route
        name = route.resource.canonical if route.resource is not None else "unmatched"
        metrics = request.app[appkeys.METRICS]
        metrics.requests.labels(method=request.method, route=name, status=str(status)).inc()
        if not name.endswith("/stream"):
            metrics.request_seconds.labels(route=name).observe(time.perf_counter() - started)


def create_app(
    settings: PanelSettings,
    *,
    ring: KeyRing | RingSource | None = None,
    redis_url: str | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """Build the panel; `ring`, `redis_url` and `clock` override the defaults (for tests)."""
    app = web.Application(
        middlewares=[
            # First: a request for another host (DNS rebinding) reaches nothing else.
            make_host_middleware(settings),
            metrics_middleware,
            error_middleware,
            make_access_middleware(authenticate, refuse),
        ],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[appkeys.SETTINGS] = settings
    app[appkeys.CLOCK] = clock
    app[appkeys.CATALOGUE] = CatalogueCache(settings.common.installers_dir)
    app[appkeys.PAGES] = PageCache()
    app[appkeys.METRICS] = PanelMetrics()
    app[appkeys.STREAMS] = weakref.WeakSet[EventSourceResponse]()
    if ring is None:
        try:
            app[appkeys.RING] = KeyRingFile(keys_file_of(settings)).current
        except (OSError, KeyRingError) as error:
            raise KeyRingError(
                f"cannot read the key ring {keys_file_of(settings)}: {error} "
                "(set PROV_HMAC_KEYS_FILE, or create one with `provision keys new`)"
            ) from None
    elif isinstance(ring, KeyRing):
        fixed_ring = ring
        app[appkeys.RING] = lambda: fixed_ring
    else:
        app[appkeys.RING] = ring
    app.cleanup_ctx.append(_redis_context(redis_url or redis_url_or_local(settings.common)))
    app.on_shutdown.append(_close_streams)
    app.on_response_prepare.append(add_security_headers)
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(default=True),
    )
    app.router.add_routes(health.routes)
    app.router.add_routes(api.routes)
    app.router.add_get("/api/jobs/{job_id}/stream", stream_job)
    app.router.add_routes(pages.routes)
    app.router.add_routes(login.routes)
    app.router.add_static("/static", STATIC_DIR, name="static", append_version=True)
    install_static_urls(app, STATIC_DIR)
    return app


def _redis_context(url: str) -> Callable[[web.Application], AsyncIterator[None]]:
    async def redis_context(app: web.Application) -> AsyncIterator[None]:
        # No PING here: the panel starts (and answers 503 with a clear page) while Redis is
        # down, and the client reconnects by itself once it is back.
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=3.0,
            health_check_interval=30,
        )
        settings = app[appkeys.SETTINGS]
        store = EventStore(client, RedisKeys(settings.common.namespace), app[appkeys.RING])
        app[appkeys.REDIS] = client
        keys = RedisKeys(settings.common.namespace)
        app[appkeys.USERS] = UserStore(client, keys)
        app[appkeys.TOKENS] = TokenStore(client, keys)
        app[appkeys.SESSIONS] = SessionStore(
            client, keys, idle_s=settings.session_idle_s, absolute_s=settings.session_max_s
        )
        app[appkeys.LIMITER] = RateLimiter(client, keys)
        app[appkeys.CREDENTIALS] = CredentialLookup(client, keys)
        app[appkeys.JOBS] = JobService(
            client,
            store,
            app[appkeys.RING],
            ttl_s=settings.common.job_ttl_s,
            limits=SubmissionLimits(
                per_minute=settings.submissions_per_minute,
                max_unfinished=settings.max_unfinished_per_user,
            ),
            clock=app[appkeys.CLOCK],
        )
        try:
            await check_durability(client, log)
        except (OSError, ConnectionError) as error:
            log.warning("panel.redis_unreachable_at_start", error=str(error))
        except Exception as error:
            log.warning("panel.redis_unreachable_at_start", error=str(error))
        yield
        await client.aclose()

    return redis_context


async def _close_streams(app: web.Application) -> None:
    streams: weakref.WeakSet[EventSourceResponse] = app[appkeys.STREAMS]
    for response in tuple(streams):
        response.stop_streaming()
