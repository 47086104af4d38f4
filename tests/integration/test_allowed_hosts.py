"""The `Host` allow-list (panel/web/hosts.py): a DNS-rebinding page reaches nothing.

The real panel runs on aiohttp's test server (`127.0.0.1:<random port>`, while the settings
say 8080); each request sets its own `Host`, as a browser that followed a rebound name would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from core.errors import SettingsError
from core.keys import RedisKeys
from core.runtime.settings import PanelSettings, parse_host
from panel.app import create_app
from panel.web.hosts import default_hosts, host_allowed
from tests.agent_support import make_ring, write_app
from tests.auth_support import TEST_PASSWORD, bearer, fetch_login_form, make_token

pytestmark = pytest.mark.redis

EVIL = "evil.example:8080"

MakeClient = Callable[..., Awaitable[TestClient]]


# -- the rules, as pure functions ----------------------------------------------------------


def test_the_list_is_read_case_insensitively_with_ports_and_bracketed_ipv6():
    settings = PanelSettings.from_env(
        {"PROV_PANEL_ALLOWED_HOSTS": " Panel.Example.COM , other.example:8443,[::1]:9000,"}
    )
    assert settings.allowed_hosts == (
        ("panel.example.com", None),
        ("other.example", 8443),
        ("::1", 9000),
    )
    assert PanelSettings.from_env({}).allowed_hosts is None


@pytest.mark.parametrize("bad", ["::1", "host:port", "host:0", "[::1", "a b", "[::1]x", ","])
def test_a_bad_entry_is_a_settings_error_naming_the_variable(bad):
    with pytest.raises(SettingsError, match="PROV_PANEL_ALLOWED_HOSTS"):
        PanelSettings.from_env({"PROV_PANEL_ALLOWED_HOSTS": bad})


def test_an_entry_without_a_port_means_the_panels_port_or_none_given():
    allowed = default_hosts("127.0.0.1")
    for host in ("127.0.0.1:8123", "LOCALHOST:8123", "[::1]:8123", "[0:0::1]:8123", "localhost"):
        assert host_allowed(host, allowed, local_port=8123), host
    for host in (EVIL, "localhost:8124", "127.0.0.2:8123", "::1", "", None, "evil.example"):
        assert not host_allowed(host, allowed, local_port=8123), host


def test_an_entry_with_a_port_means_that_port_and_no_port_means_80_or_443():
    allowed = (("a.example", 8443), ("b.example", 443))
    assert host_allowed("a.example:8443", allowed, local_port=8080)
    assert not host_allowed("a.example:8080", allowed, local_port=8080)
    assert not host_allowed("a.example", allowed, local_port=8080)
    assert host_allowed("b.example", allowed, local_port=8080)
    assert parse_host("[::1]:80") == ("::1", 80)


# -- the real panel ------------------------------------------------------------------------


@pytest.fixture
async def make_client(tmp_path, redis_url, namespace) -> AsyncIterator[MakeClient]:
    installers = tmp_path / "installers"
    write_app(installers, "hello", 'echo "hello"')
    ring = make_ring(tmp_path / "hmac.keys")
    clients: list[TestClient] = []

    async def make(**environ: str) -> TestClient:
        settings = PanelSettings.from_env(
            {
                "PROV_NAMESPACE": namespace,
                "PROV_INSTALLERS_DIR": str(installers),
                "PROV_PANEL_PORT": "8080",  # not the test server's port
                **environ,
            }
        )
        client = TestClient(TestServer(create_app(settings, ring=ring, redis_url=redis_url)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def _job_count(redis_url: str, namespace: str) -> int:
    client = aioredis.from_url(redis_url)
    try:
        return int(await client.zcard(RedisKeys(namespace).jobs_index))
    finally:
        await client.aclose()


async def test_a_rebinding_host_gets_400_and_nothing_is_done(make_client, redis_url, namespace):
    client = await make_client()
    token = await make_token(redis_url, namespace)
    headers = {**bearer(token), "Host": EVIL}
    response = await client.post("/api/install", json={"app_id": "hello"}, headers=headers)
    assert response.status == 400
    body = await response.json()
    assert body["error"] == "malformed"
    assert "evil.example:8080" in body["message"]
    assert "PROV_PANEL_ALLOWED_HOSTS" in body["message"]
    assert await _job_count(redis_url, namespace) == 0
    # The same token from the panel's own name is served: the refusal was the Host's.
    own = await client.post("/api/install", json={"app_id": "hello"}, headers=bearer(token))
    assert own.status == 201, await own.text()
    assert await _job_count(redis_url, namespace) == 1


async def test_a_rebinding_host_gets_a_short_page_and_no_cookie_or_login(make_client):
    client = await make_client()
    page = await client.get("/login", headers={"Host": EVIL})
    assert page.status == 400
    assert page.headers["Content-Type"].startswith("text/html")
    text = await page.text()
    assert "Unknown host" in text and "evil.example:8080" in text
    assert "Set-Cookie" not in page.headers
    assert "Content-Security-Policy" in page.headers  # the security headers still apply
    form = await fetch_login_form(client)
    login = await client.post(
        "/login",
        data=form.fields("nobody", TEST_PASSWORD, "/"),
        headers={**form.headers(), "Host": EVIL},
        allow_redirects=False,
    )
    assert login.status == 400
    assert "Set-Cookie" not in login.headers


async def test_an_escaped_host_cannot_inject_markup(make_client):
    client = await make_client()
    page = await client.get("/", headers={"Host": "<b>x</b>.example"})
    assert page.status == 400
    assert "<b>" not in await page.text()


async def test_the_panels_own_names_pass_with_the_port_it_listens_on(
    make_client, redis_url, namespace
):
    client = await make_client()
    token = await make_token(redis_url, namespace)
    port = client.port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
        response = await client.get("/api/apps", headers={**bearer(token), "Host": host})
        assert response.status == 200, (host, await response.text())
    # A loopback name on another port is not this panel.
    other = await client.get(
        "/api/apps", headers={**bearer(token), "Host": f"localhost:{port + 1}"}
    )
    assert other.status == 400


async def test_health_checks_are_exempt(make_client):
    client = await make_client()
    for path in ("/healthz", "/readyz"):
        response = await client.get(path, headers={"Host": "10.0.0.7:9999"})
        assert response.status == 200, path
    assert (await client.get("/metrics", headers={"Host": EVIL})).status == 400


async def test_the_env_list_replaces_the_default(make_client, redis_url, namespace):
    client = await make_client(
        PROV_PANEL_ALLOWED_HOSTS="panel.example.com,other.example:8443,127.0.0.1"
    )
    token = await make_token(redis_url, namespace)
    port = client.port
    expected = {
        "panel.example.com": 200,  # a proxy passing https://panel.example.com
        "PANEL.example.com.": 200,
        f"panel.example.com:{port}": 200,
        "panel.example.com:9999": 400,
        "other.example:8443": 200,
        "other.example": 400,
        f"127.0.0.1:{port}": 200,
        f"localhost:{port}": 400,  # not listed any more
        EVIL: 400,
    }
    for host, status in expected.items():
        response = await client.get("/api/apps", headers={**bearer(token), "Host": host})
        assert response.status == status, host
