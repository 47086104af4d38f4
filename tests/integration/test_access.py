"""Access control through the API and the route table: roles, tokens, headers, request limits.

Every test builds the real panel with `create_app` on its own Redis namespace and talks to it
over HTTP through aiohttp's test client, as a script or a browser would. The client keeps no
cookies by itself (`DummyCookieJar`): each request says which session cookie it carries, so a
test can replay an old cookie on purpose, and a login first GETs the form for its
pre-session cookie and CSRF token (`Panel.login`, `tests.auth_support.LoginForm`). Time is a
fake clock handed to `create_app`, so session timeouts and rate-limit windows pass in an
instant. The browser flows (login, sessions, CSRF, login limits, a password through the whole
stack) are in test_access_browser_flows.py, which uses the helpers and fixtures defined here.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse, DummyCookieJar, web
from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from core.keys import RedisKeys
from core.runtime.settings import PanelSettings
from panel import appkeys
from panel.app import create_app
from panel.auth import users as panel_users
from panel.auth.access import ROUTE_PERMISSIONS, Permission, Role
from panel.auth.sessions import COOKIE_NAME
from panel.auth.tokens import TokenStore, token_hash
from panel.auth.users import UserStore
from panel.web.pages import MAX_FORM_FIELDS
from tests.agent_support import make_ring, write_app
from tests.auth_support import (
    CSRF_INPUT,
    TEST_PASSWORD,
    LoginForm,
    bearer,
    fetch_login_form,
    make_token,
)

# The text of aiohttp's warning for a handler that returns an HTTPException (a login test
# checks the panel never does).
RETURNED_HTTP_EXCEPTION = "returning HTTPException object is deprecated"
pytestmark = pytest.mark.redis

APP = "hello"
ICON = b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 8 8"><rect width="8"/></svg>'
EVIL = "https://evil.example"
NO_SUCH_JOB = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
ROLES: tuple[Role | None, ...] = (None, Role.VIEWER, Role.OPERATOR, Role.ADMIN)
RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}
ONE_MIB = 1024 * 1024


# --- the panel under test --------------------------------------------------------------------


class FakeClock:
    """The panel's clock: epoch seconds that move only when the test says so."""

    def __init__(self) -> None:
        # Start on an hour boundary, so every rate-limit window (10 s .. 900 s) starts now too.
        self.now = float(int(time.time()) // 3600 * 3600)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Panel:
    """A running panel, its clock, and the stores it uses."""

    client: TestClient
    clock: FakeClock
    namespace: str

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.namespace)

    @property
    def redis(self) -> aioredis.Redis:
        return self.client.app[appkeys.REDIS]

    @property
    def users(self) -> UserStore:
        return self.client.app[appkeys.USERS]

    @property
    def tokens(self) -> TokenStore:
        return self.client.app[appkeys.TOKENS]

    @property
    def host(self) -> str:
        return f"{self.client.host}:{self.client.port}"

    async def add_user(self, name: str, role: Role) -> None:
        await self.users.add(name, role, TEST_PASSWORD)

    async def token(self, name: str, role: Role) -> str:
        """A bearer token of `name` (created with `role` if missing)."""
        if await self.users.get(name) is None:
            await self.add_user(name, role)
        token, _info = await self.tokens.create(name, name="test")
        return token

    async def login_form(self) -> LoginForm:
        """GET the login form: its pre-session cookie and CSRF token, as a browser keeps them."""
        return await fetch_login_form(self.client)

    async def post_login(
        self, data: dict[str, str], headers: dict[str, str] | None = None
    ) -> ClientResponse:
        """POST `/login` with exactly these fields and headers (without following redirects)."""
        response = await self.client.post(
            "/login", data=data, headers=headers or {}, allow_redirects=False
        )
        await response.read()
        return response

    async def login(
        self,
        username: str,
        password: str = TEST_PASSWORD,
        *,
        next_path: str = "/",
        cookie: str | None = None,
        headers: dict[str, str] | None = None,
        form: LoginForm | None = None,
    ) -> ClientResponse:
        """Fill in the login form (a fresh one unless `form` is given) and POST it."""
        form = form or await self.login_form()
        return await self.post_login(
            form.fields(username, password, next_path),
            {**form.headers(session_cookie=cookie), **(headers or {})},
        )

    async def browser(self, name: str, role: Role | None = None) -> Browser:
        """A logged-in cookie session of `name` (created with `role` first when given)."""
        if role is not None:
            await self.add_user(name, role)
        response = await self.login(name)
        assert response.status == 303, await response.text()
        return Browser(self, response.cookies[COOKIE_NAME].value)

    async def job_count(self) -> int:
        return int(await self.redis.zcard(self.keys.jobs_index))

    async def job_state(self, job_id: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def submit(self, token: str, **inputs: Any) -> str:
        """Queue a job of APP over the API with a bearer token; its id."""
        response = await self.client.post(
            "/api/install", json={"app_id": APP, "inputs": inputs}, headers=bearer(token)
        )
        assert response.status == 201, await response.text()
        return str((await response.json())["job_id"])


@dataclass
class Browser:
    """One browser's session cookie: requests that carry it."""

    panel: Panel
    cookie: str

    def headers(self, more: dict[str, str] | None = None) -> dict[str, str]:
        return {"Cookie": f"{COOKIE_NAME}={self.cookie}", **(more or {})}

    async def get(self, path: str, **kwargs: Any) -> ClientResponse:
        headers = self.headers(kwargs.pop("headers", None))
        response = await self.panel.client.get(
            path, headers=headers, allow_redirects=False, **kwargs
        )
        await response.read()
        return response

    async def post(self, path: str, **kwargs: Any) -> ClientResponse:
        headers = self.headers(kwargs.pop("headers", None))
        response = await self.panel.client.post(
            path, headers=headers, allow_redirects=False, **kwargs
        )
        await response.read()
        return response

    async def csrf(self, page: str = "/") -> str:
        """The CSRF token the page renders into its forms."""
        response = await self.get(page)
        assert response.status == 200, (page, response.status)
        found = CSRF_INPUT.search(await response.text())
        assert found and found.group(1), f"no CSRF token on {page}"
        return unescape(found.group(1))


PanelFactory = Callable[..., Awaitable[Panel]]


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2 with the lowest cost: every code path stays (hash, verify, dummy hash, rehash
    check), but a login takes a millisecond instead of ~100 ms of CPU, which keeps this file
    fast on a busy machine. Nothing tested here depends on the cost parameters."""

    def cheap() -> PasswordHasher:
        return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

    monkeypatch.setattr(panel_users, "PasswordHasher", cheap)


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    root = tmp_path / "installers"
    folder = write_app(
        root,
        APP,
        "exit 0",
        inputs=[
            {"name": "port", "type": "port", "default": 8080},
            {"name": "password", "type": "password"},
        ],
        icon="icon.svg",
    )
    (folder / "icon.svg").write_bytes(ICON)
    return root


@pytest.fixture
async def make_panel(
    tmp_path: Path, installers: Path, redis_url: str, namespace: str
) -> AsyncIterator[PanelFactory]:
    """Build and start panels on this test's namespace; `env` adds PROV_* settings."""
    ring = make_ring(tmp_path / "hmac.keys")
    started: list[TestClient] = []

    async def make(**env: str) -> Panel:
        settings = PanelSettings.from_env(
            {
                "PROV_REDIS_URL": redis_url,
                "PROV_NAMESPACE": namespace,
                "PROV_INSTALLERS_DIR": str(installers),
                "PROV_HMAC_KEYS_FILE": str(tmp_path / "hmac.keys"),
                **env,
            }
        )
        clock = FakeClock()
        app = create_app(settings, ring=ring, clock=clock)
        client = TestClient(TestServer(app), cookie_jar=DummyCookieJar())
        await client.start_server()
        started.append(client)
        return Panel(client=client, clock=clock, namespace=settings.common.namespace)

    yield make
    for client in started:
        await client.close()


@pytest.fixture
async def panel(make_panel: PanelFactory) -> Panel:
    return await make_panel()


def csp_directives(value: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in value.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = words[1:]
    return directives


def login_next(location: str) -> str | None:
    """The `next` of a redirect to the login page, or None for any other redirect."""
    parts = urlsplit(location)
    if parts.scheme or parts.netloc or parts.path != "/login":
        return None
    values = parse_qs(parts.query).get("next", [])
    return values[0] if len(values) == 1 else None


async def read_until(response: ClientResponse, wanted: bytes, *, timeout_s: float) -> bytes:
    """What a stream sends until `wanted` shows up, it ends, or `timeout_s` passes."""
    received = b""
    deadline = time.monotonic() + timeout_s
    while wanted not in received and (left := deadline - time.monotonic()) > 0:
        try:
            chunk = await asyncio.wait_for(response.content.readany(), timeout=left)
        except TimeoutError:
            break
        if not chunk:
            break
        received += chunk
    return received


# --- the route table -------------------------------------------------------------------------


def route_table_of(panel: Panel) -> set[tuple[str, str]]:
    """Every (method, route pattern) the app serves, HEAD counted as GET."""
    found: set[tuple[str, str]] = set()
    for route in panel.client.app.router.routes():
        assert route.resource is not None
        method = "GET" if route.method == "HEAD" else route.method
        found.add((method, route.resource.canonical))
    return found


async def test_every_route_has_a_permission_and_every_permission_a_route(panel):
    served = route_table_of(panel)
    assert served - set(ROUTE_PERMISSIONS) == set(), "routes without a permission"
    assert set(ROUTE_PERMISSIONS) - served == set(), "permissions for routes that do not exist"


async def test_a_route_missing_from_the_table_is_closed_even_to_an_admin(
    tmp_path, installers, redis_url, namespace
):
    settings = PanelSettings.from_env(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_NAMESPACE": namespace,
            "PROV_INSTALLERS_DIR": str(installers),
        }
    )
    app = create_app(settings, ring=make_ring(tmp_path / "hmac.keys"))

    async def unlisted(_request: web.Request) -> web.Response:
        return web.Response(text="the-unlisted-handler-ran")

    app.router.add_get("/unlisted", unlisted)
    app.router.add_post("/api/unlisted", unlisted)
    token = await make_token(redis_url, namespace, name="root", role=Role.ADMIN)
    async with TestClient(TestServer(app), cookie_jar=DummyCookieJar()) as client:
        for method, path in (("GET", "/unlisted"), ("POST", "/api/unlisted")):
            for headers in ({}, bearer(token)):
                response = await client.request(
                    method, path, headers=headers, allow_redirects=False
                )
                assert response.status == 403, (method, path, headers)
                assert "the-unlisted-handler-ran" not in await response.text()


def sample_path(canonical: str, params: dict[str, str]) -> str:
    """A real path for a route pattern; a new parameter name must be given a sample here."""
    if canonical == "/static":
        return "/static/css/app.css"

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        assert name in params, f"no sample value for {{{name}}} in {canonical}: add one"
        return params[name]

    return re.sub(r"\{(\w+)(?::[^}]*)?\}", fill, canonical)


def sample_body(method: str, canonical: str, login: LoginForm) -> dict[str, Any]:
    """A valid body for each state-changing route (an empty form for any other)."""
    if method != "POST":
        return {}
    bodies: dict[str, dict[str, Any]] = {
        "/login": {"data": login.fields("viewer", TEST_PASSWORD, "/jobs")},
        "/apps/{app_id}/install": {"data": {"port": "8081"}},
        "/api/install": {"json": {"app_id": APP, "inputs": {"port": 8082}}},
    }
    return bodies.get(canonical, {"data": {}})


def is_page(method: str, path: str) -> bool:
    """Whether an anonymous request is a browser's page view (sent to log in, not 401)."""
    return method == "GET" and not path.startswith("/api/") and path != "/metrics"


def judge(
    permission: Permission, caller: Role | None, method: str, path: str, response: ClientResponse
) -> str | None:
    """What is wrong with this answer for this caller, or None."""
    status = response.status
    needed = permission.role
    if status >= 500:
        return f"server error {status}"
    if needed is None:
        return None if status < 400 else f"public route answered {status}"
    if caller is None:
        if is_page(method, path):
            location = response.headers.get("Location", "")
            if status != 303 or login_next(location) != path:
                return f"expected 303 to /login?next={path}, got {status} to {location}"
            return None
        return None if status == 401 else f"expected 401, got {status}"
    if RANK[caller] < RANK[needed]:
        return None if status == 403 else f"expected 403 for {caller}, got {status}"
    return f"refused {caller} with {status}" if status in (401, 403) else None


async def test_every_route_answers_each_role_as_its_permission_says(panel, redis_url, namespace):
    tokens = {
        role: await make_token(redis_url, namespace, name=role.value, role=role)
        for role in (Role.VIEWER, Role.OPERATOR, Role.ADMIN)
    }
    job_id = await panel.submit(tokens[Role.ADMIN])
    # Ended, so the stream route drains and idles instead of blocking on a live job.
    await panel.client.post(f"/api/jobs/{job_id}/cancel", headers=bearer(tokens[Role.ADMIN]))
    params = {"app_id": APP, "job_id": job_id}
    login = await panel.login_form()
    problems: list[str] = []
    checked = 0
    for (method, canonical), permission in sorted(ROUTE_PERMISSIONS.items()):
        path = sample_path(canonical, params)
        for caller in ROLES:
            headers = bearer(tokens[caller]) if caller is not None else {}
            if canonical == "/login":
                headers |= login.headers()
            async with panel.client.request(
                method,
                path,
                headers=headers,
                allow_redirects=False,
                **sample_body(method, canonical, login),
            ) as response:
                # Only the status and headers matter; leaving closes an SSE stream.
                problem = judge(permission, caller, method, path, response)
            checked += 1
            if problem:
                who = caller.value if caller else "anonymous"
                problems.append(f"{method} {path} as {who} ({permission.name}): {problem}")
    assert problems == []
    assert checked == 4 * len(ROUTE_PERMISSIONS)


async def test_an_anonymous_metrics_scrape_gets_401_not_a_login_page(panel):
    response = await panel.client.get("/metrics", allow_redirects=False)
    assert response.status == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


# --- API tokens ------------------------------------------------------------------------------


async def test_a_token_carries_the_users_current_role(panel):
    token = await panel.token("olga", Role.VIEWER)
    body = {"app_id": APP, "inputs": {}}
    assert (await panel.client.get("/api/jobs", headers=bearer(token))).status == 200
    assert (await panel.client.post("/api/install", json=body, headers=bearer(token))).status == 403
    await panel.users.set_role("olga", Role.OPERATOR)
    assert (await panel.client.post("/api/install", json=body, headers=bearer(token))).status == 201
    assert (await panel.client.get("/api/agents", headers=bearer(token))).status == 403
    await panel.users.set_role("olga", Role.ADMIN)
    assert (await panel.client.get("/api/agents", headers=bearer(token))).status == 200
    await panel.users.set_role("olga", Role.VIEWER)
    assert (await panel.client.post("/api/install", json=body, headers=bearer(token))).status == 403


async def expect_401(panel: Panel, headers: dict[str, str]) -> None:
    response = await panel.client.get("/api/jobs", headers=headers)
    assert response.status == 401, headers
    assert (await response.json())["error"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_revoked_token_gets_401(panel):
    token = await panel.token("pete", Role.VIEWER)
    other = await panel.token("pete", Role.VIEWER)
    assert (await panel.client.get("/api/jobs", headers=bearer(token))).status == 200
    assert await panel.tokens.revoke(token_hash(token)[:12]) == 1
    await expect_401(panel, bearer(token))
    assert (await panel.client.get("/api/jobs", headers=bearer(other))).status == 200


async def test_an_expired_token_gets_401(panel):
    await panel.add_user("quinn", Role.VIEWER)
    now_ms = int(panel.clock() * 1000)
    expired, _ = await panel.tokens.create("quinn", expires_at_ms=now_ms - 1000)
    await expect_401(panel, bearer(expired))
    soon, _ = await panel.tokens.create("quinn", expires_at_ms=now_ms + 60_000)
    assert (await panel.client.get("/api/jobs", headers=bearer(soon))).status == 200
    panel.clock.advance(60)
    await expect_401(panel, bearer(soon))


async def test_a_token_of_a_removed_user_gets_401(panel):
    token = await panel.token("rita", Role.ADMIN)
    assert (await panel.client.get("/api/jobs", headers=bearer(token))).status == 200
    assert await panel.users.remove("rita")
    await expect_401(panel, bearer(token))


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer garbage",
        "Bearer prov_" + "A" * 43,
        "Bearer ",
        "Bearer",
        "bearer\tprov_x",
        "Basic dXNlcjpwYXNzd29yZA==",
        "Digest username=admin",
        "prov_" + "B" * 43,
        "Bearer " + "prov_" + "C" * 5000,
    ],
)
async def test_a_garbage_or_non_bearer_authorization_gets_401(panel, authorization):
    await expect_401(panel, {"Authorization": authorization})


async def test_a_valid_token_under_another_scheme_gets_401(panel):
    token = await panel.token("sam", Role.ADMIN)
    for scheme in ("Basic", "Token", "Digest"):
        await expect_401(panel, {"Authorization": f"{scheme} {token}"})


async def test_redis_holds_only_the_hash_of_a_token(panel):
    token = await panel.token("tess", Role.VIEWER)
    assert (await panel.client.get("/api/jobs", headers=bearer(token))).status == 200
    dump = await dump_namespace(panel.redis, panel.namespace)
    secret = token.removeprefix("prov_")
    assert token.encode() not in dump
    assert secret.encode() not in dump
    assert secret[:16].encode() not in dump
    assert token_hash(token).encode() in dump  # the hash is there: the dump is real


async def dump_namespace(client: aioredis.Redis, namespace: str) -> bytes:
    """Every key name and every byte of every value under the namespace."""
    chunks: list[bytes] = []
    async for key in client.scan_iter(match=f"{namespace}:*"):
        chunks.append(key)
        kind = (await client.type(key)).decode()
        if kind == "stream":
            for entry_id, fields in await client.xrange(key):
                chunks.append(entry_id)
                chunks.extend(k + b"=" + v for k, v in fields.items())
        elif kind == "hash":
            chunks.extend(k + b"=" + v for k, v in (await client.hgetall(key)).items())
        elif kind == "zset":
            chunks.extend(m for m, _ in await client.zrange(key, 0, -1, withscores=True))
        elif kind == "set":
            chunks.extend(await client.smembers(key))
        elif kind == "list":
            chunks.extend(await client.lrange(key, 0, -1))
        elif kind == "string":
            chunks.append(await client.get(key) or b"")
        else:
            raise AssertionError(f"unexpected key type {kind} of {key!r}")
    return b"\n".join(chunks)


# --- security headers ------------------------------------------------------------------------


def check_security_headers(what: str, response: ClientResponse) -> list[str]:
    """What is missing from an answer's security headers."""
    problems: list[str] = []
    headers = response.headers
    policy = csp_directives(headers.get("Content-Security-Policy", ""))
    scripts = policy.get("script-src", [])
    if "'self'" not in scripts:
        problems.append(f"{what}: script-src lacks 'self': {scripts}")
    if {"'unsafe-inline'", "'unsafe-eval'", "*"} & set(scripts + policy.get("default-src", [])):
        problems.append(f"{what}: scripts may run inline: {policy}")
    if policy.get("frame-ancestors") != ["'none'"]:
        problems.append(f"{what}: frame-ancestors is {policy.get('frame-ancestors')}")
    if headers.get("X-Content-Type-Options") != "nosniff":
        problems.append(
            f"{what}: X-Content-Type-Options is {headers.get('X-Content-Type-Options')}"
        )
    referrer = headers.get("Referrer-Policy", "")
    if referrer not in (
        "no-referrer",
        "same-origin",
        "strict-origin",
        "strict-origin-when-cross-origin",
    ):
        problems.append(f"{what}: Referrer-Policy is {referrer!r}")
    return problems


def inline_scripts(html: str) -> list[str]:
    """Script tags that would need 'unsafe-inline': neither src= nor a JSON data block."""
    return [
        attrs
        for attrs in re.findall(r"<script\b([^>]*)>", html, flags=re.IGNORECASE)
        if "src=" not in attrs and 'type="application/json"' not in attrs
    ]


async def test_every_page_carries_a_strict_csp_and_the_security_headers(panel):
    admin = await panel.token("root", Role.ADMIN)
    job_id = await panel.submit(admin)
    browser = await panel.browser("root")
    viewer = await panel.browser("carl", Role.VIEWER)
    login = await panel.login_form()
    pages: dict[str, Callable[[], Awaitable[ClientResponse]]] = {
        "catalogue": lambda: browser.get("/"),
        "form": lambda: browser.get(f"/apps/{APP}"),
        "job": lambda: browser.get(f"/jobs/{job_id}"),
        "jobs": lambda: browser.get("/jobs"),
        "agents": lambda: browser.get("/agents"),
        "login": lambda: panel.client.get("/login"),
        "login error": lambda: panel.login("x", "y", form=login),
        "login csrf": lambda: panel.post_login({"username": "x", "password": "y"}),
        "app 404": lambda: browser.get("/apps/nope"),
        "job 404": lambda: browser.get(f"/jobs/{NO_SUCH_JOB}"),
        "route 404": lambda: browser.get("/no/such/page"),
        "403": lambda: viewer.get("/agents"),
    }
    expected_status = {"login error": 401, "app 404": 404, "job 404": 404, "route 404": 404}
    expected_status["403"] = expected_status["login csrf"] = 403
    problems: list[str] = []
    for name, request in pages.items():
        response = await request()
        if response.status != expected_status.get(name, 200):
            problems.append(f"{name}: status {response.status}")
        problems += check_security_headers(name, response)
        if response.content_type == "text/html":
            html = await response.text()
            problems += [f"{name}: inline <script{a}>" for a in inline_scripts(html)]
        elif name != "route 404":  # aiohttp's own 404 is plain text
            problems.append(f"{name}: content type {response.content_type}")
    assert problems == []


async def test_job_pages_and_api_answers_are_never_cached_but_static_assets_are(panel):
    admin = await panel.token("root", Role.ADMIN)
    job_id = await panel.submit(admin)
    browser = await panel.browser("root")
    no_store = [
        await browser.get(f"/jobs/{job_id}"),
        await browser.get(f"/jobs/{job_id}/log.txt"),
        await browser.get("/jobs"),
    ]
    for path in (
        "/api/apps",
        f"/api/apps/{APP}",
        "/api/jobs",
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/events",
        f"/api/jobs/{job_id}/log",
        f"/api/jobs/{NO_SUCH_JOB}",
        "/api/openapi.json",
    ):
        no_store.append(await panel.client.get(path, headers=bearer(admin)))
    no_store.append(await panel.client.get("/api/jobs"))  # a 401
    for response in no_store:
        assert "no-store" in response.headers.get("Cache-Control", ""), response.url
        assert response.headers.get("X-Content-Type-Options") == "nosniff", response.url
    static = await panel.client.get("/static/css/app.css")
    assert static.status == 200
    assert "no-store" not in static.headers.get("Cache-Control", "")
    assert static.headers.get("X-Content-Type-Options") == "nosniff"


async def test_the_event_stream_carries_the_security_headers_and_no_store(panel):
    admin = await panel.token("root", Role.ADMIN)
    job_id = await panel.submit(admin)
    async with panel.client.get(f"/api/jobs/{job_id}/stream", headers=bearer(admin)) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert "no-store" in response.headers.get("Cache-Control", "")
        assert check_security_headers("stream", response) == []
        received = await read_until(response, b"event: event", timeout_s=5)
        assert b"event: event" in received


# --- request limits --------------------------------------------------------------------------


async def test_a_form_with_too_many_fields_is_refused_and_queues_nothing(panel):
    token = await panel.token("root", Role.ADMIN)
    browser = await panel.browser("root")
    csrf = await browser.csrf(f"/apps/{APP}")
    padding = [(f"extra{n}", "x") for n in range(MAX_FORM_FIELDS)]
    by_token = await panel.client.post(
        f"/apps/{APP}/install", data=[("port", "8081"), *padding], headers=bearer(token)
    )
    by_cookie = await browser.post(
        f"/apps/{APP}/install", data=[("_csrf", csrf), ("port", "8081"), *padding]
    )
    for response in (by_token, by_cookie):
        assert 400 <= response.status < 500, response.status
    assert await panel.job_count() == 0
    at_limit = await panel.client.post(
        f"/apps/{APP}/install",
        data=[("port", "8081"), *padding[: MAX_FORM_FIELDS - 1]],
        headers=bearer(token),
        allow_redirects=False,
    )
    assert at_limit.status == 303  # exactly the limit is still a form
    assert await panel.job_count() == 1


async def test_a_form_with_too_many_fields_is_a_400_with_the_panels_page(panel):
    token = await panel.token("root", Role.ADMIN)
    padding = [(f"extra{n}", "x") for n in range(MAX_FORM_FIELDS)]
    response = await panel.client.post(
        f"/apps/{APP}/install", data=[("port", "8081"), *padding], headers=bearer(token)
    )
    assert response.status == 400
    assert "Too many fields" in await response.text()


def big_body(prefix: bytes, suffix: bytes) -> io.BytesIO:
    return io.BytesIO(prefix + b"a" * (ONE_MIB + 10) + suffix)


async def test_a_body_over_1_mib_is_a_413_on_every_post(panel):
    token = await panel.token("root", Role.ADMIN)
    browser = await panel.browser("root")
    csrf = await browser.csrf(f"/apps/{APP}")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    answers = {
        "api": await panel.client.post(
            "/api/install",
            data=big_body(b'{"app_id": "', b'"}'),
            headers={**bearer(token), "Content-Type": "application/json"},
        ),
        "form by token": await panel.client.post(
            f"/apps/{APP}/install", data=big_body(b"port=", b""), headers={**bearer(token), **form}
        ),
        "form by cookie": await browser.post(
            f"/apps/{APP}/install", data=big_body(f"_csrf={csrf}&port=".encode(), b""), headers=form
        ),
        "api by cookie": await browser.post(
            "/api/install",
            data=big_body(b'{"app_id": "', b'"}'),
            headers={"X-CSRF-Token": csrf, "Content-Type": "application/json"},
        ),
        "login": await panel.client.post(
            "/login", data=big_body(b"username=root&password=", b""), headers=form
        ),
    }
    assert {name: r.status for name, r in answers.items()} == dict.fromkeys(answers, 413)
    assert (await answers["api"].json())["error"] == "payload_too_large"
    assert await panel.job_count() == 0


@pytest.mark.parametrize(
    "body",
    [
        b'{"app_id": "hello", "inputs": {"port": ' + b"[" * 40 + b"]" * 40 + b"}}",
        b'{"app_id": "hello", "inputs": {"port": ' + b'{"a":' * 40 + b"1" + b"}" * 40 + b"}}",
        b'{"app_id": "hello", "inputs": {"port": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b"[" * 400_000 + b"]" * 400_000,
        b'{"a":' * 150_000 + b"1" + b"}" * 150_000,
    ],
    ids=["lists-40", "objects-40", "lists-100k", "top-level-400k", "objects-150k"],
)
async def test_deeply_nested_json_is_a_400_never_a_5xx(panel, body):
    token = await panel.token("root", Role.ADMIN)
    response = await panel.client.post(
        "/api/install",
        data=body,
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert response.status == 400
    assert (await response.json())["error"] == "malformed"
    assert await panel.job_count() == 0
