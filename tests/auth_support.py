"""Users, API tokens and the login form for tests that talk to a panel."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape

import redis.asyncio as aioredis
from aiohttp import ClientResponse, ClientSession
from aiohttp.test_utils import TestClient

from core.keys import RedisKeys
from panel.auth.access import Role
from panel.auth.sessions import COOKIE_NAME
from panel.auth.tokens import TokenStore
from panel.auth.users import UserStore
from panel.web.login import LOGIN_COOKIE

TEST_PASSWORD = "correct horse battery staple"


async def make_token(
    redis_url: str, namespace: str, *, name: str = "local", role: Role = Role.ADMIN
) -> str:
    """Create user `name` (if missing) with `role` and return a fresh API token for them."""
    client = aioredis.from_url(redis_url)
    try:
        keys = RedisKeys(namespace)
        users = UserStore(client, keys)
        if await users.get(name) is None:
            await users.add(name, role, TEST_PASSWORD)
        token, _info = await TokenStore(client, keys).create(name, name="test")
        return token
    finally:
        await client.aclose()


def bearer(token: str) -> dict[str, str]:
    """The header that authenticates with `token`."""
    return {"Authorization": f"Bearer {token}"}


# --- the login form --------------------------------------------------------------------------

CSRF_INPUT = re.compile(r'name="_csrf" value="([^"]*)"')


@dataclass(frozen=True)
class LoginForm:
    """What `GET /login` hands a browser: the pre-session cookie and the form's CSRF token."""

    cookie: str
    token: str

    def fields(self, username: str, password: str, next_path: str = "/") -> dict[str, str]:
        """The form as a browser sends it."""
        return {"_csrf": self.token, "username": username, "password": password, "next": next_path}

    def headers(self, session_cookie: str | None = None) -> dict[str, str]:
        """The `Cookie` header a browser sends with it (and its session cookie, if any)."""
        cookies = [f"{LOGIN_COOKIE}={self.cookie}"]
        if session_cookie is not None:
            cookies.append(f"{COOKIE_NAME}={session_cookie}")
        return {"Cookie": "; ".join(cookies)}


def login_form_of(response: ClientResponse, html: str) -> LoginForm:
    """The login form of a rendered login page (any status: a refusal re-renders it)."""
    found = CSRF_INPUT.search(html)
    assert found and found.group(1), "the login page carries no CSRF token"
    assert LOGIN_COOKIE in response.cookies, "the login page sets no pre-session cookie"
    return LoginForm(cookie=response.cookies[LOGIN_COOKIE].value, token=unescape(found.group(1)))


async def fetch_login_form(client: ClientSession | TestClient, url: str = "/login") -> LoginForm:
    """GET the login form at `url` (a path for a test client, a full URL for a session)."""
    async with client.get(url, allow_redirects=False) as response:
        assert response.status == 200, response.status
        return login_form_of(response, await response.text())
