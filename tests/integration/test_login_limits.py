"""Failed-login limits: they slow a guesser down without locking the owner out.

The contract (panel/web/login.py's docstring): past `PROV_LOGIN_FAILURES_PER_ACCOUNT` failures
in the window, further attempts on that account from an address that has failed are refused
(429, `Retry-After`), while the right password from an address that has not failed still logs
in; counters exist only for accounts that exist and for addresses.

The panel reads the client address from the TCP peer (`request.remote`), so these tests log
in from real, different loopback addresses: a client session whose connector binds its local
end to `127.0.0.x` (all of 127.0.0.0/8 is loopback on Linux), talking to the same test server.
The panel, its fake clock and its fixtures are test_access.py's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from aiohttp import ClientResponse, ClientSession, DummyCookieJar, TCPConnector

from panel.auth.access import Role
from panel.auth.sessions import COOKIE_NAME
from tests.auth_support import TEST_PASSWORD, fetch_login_form
from tests.integration import test_access as shared
from tests.integration.test_access import Panel

pytestmark = pytest.mark.redis

# test_access.py's fixtures, bound here so that pytest finds them for this module too.
cheap_argon2 = shared.cheap_argon2
installers = shared.installers
make_panel = shared.make_panel

WRONG_PASSWORD = "wrong password!"
ADDRESS_A = "127.0.0.2"
ADDRESS_B = "127.0.0.3"
ADDRESS_C = "127.0.0.4"


@dataclass
class Address:
    """A browser at one client address, posting the panel's login form."""

    panel: Panel
    session: ClientSession

    async def login(self, username: str, password: str = TEST_PASSWORD) -> ClientResponse:
        url = str(self.panel.client.make_url("/login"))
        form = await fetch_login_form(self.session, url)
        async with self.session.post(
            url,
            data=form.fields(username, password),
            headers=form.headers(),
            allow_redirects=False,
        ) as response:
            await response.read()
            return response


@asynccontextmanager
async def at(panel: Panel, address: str) -> AsyncIterator[Address]:
    """Talk to `panel` from the loopback `address`."""
    connector = TCPConnector(local_addr=(address, 0))
    async with ClientSession(connector=connector, cookie_jar=DummyCookieJar()) as session:
        yield Address(panel, session)


async def rate_keys(panel: Panel) -> list[str]:
    """Every rate-limit counter of the panel's namespace, without the namespace prefix."""
    prefix = f"{panel.namespace}:"
    found = [key.decode() async for key in panel.redis.scan_iter(f"{prefix}rate:*")]
    return sorted(key.removeprefix(prefix) for key in found)


async def test_the_seam_the_panel_sees_each_address_apart(make_panel):
    panel = await make_panel(PROV_LOGIN_FAILURES_PER_ADDRESS="1000")
    for address in (ADDRESS_A, ADDRESS_B):
        async with at(panel, address) as browser:
            assert (await browser.login("nobody-here", WRONG_PASSWORD)).status == 401
    keys = [key for key in await rate_keys(panel) if key.startswith("rate:login-address:")]
    addresses = {key.split(":")[2] for key in keys}
    assert addresses == {ADDRESS_A, ADDRESS_B}


async def test_the_owner_logs_in_from_a_clean_address_while_the_guesser_stays_refused(
    make_panel,
):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="5",
        PROV_LOGIN_FAILURES_PER_ADDRESS="1000",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("admin", Role.ADMIN)
    async with at(panel, ADDRESS_A) as guesser, at(panel, ADDRESS_B) as owner:
        for _ in range(5):  # the limit
            assert (await guesser.login("admin", WRONG_PASSWORD)).status == 401
        blocked = await guesser.login("admin", WRONG_PASSWORD)
        assert blocked.status == 429
        # The owner, at an address that has not failed, gets in, again and again.
        for _ in range(2):
            welcome = await owner.login("admin")
            assert welcome.status == 303, await welcome.text()
            assert welcome.cookies[COOKIE_NAME].value
        # ... and that did not reset anything for the guesser: even the right password is
        # refused from the address that failed, until the window ends.
        refused = await guesser.login("admin")
        assert refused.status == 429
        assert COOKIE_NAME not in refused.cookies
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert "Too many failed attempts" in await refused.text()
        # A fresh address gets one guess at a locked account, then is refused like the first.
        async with at(panel, ADDRESS_C) as another:
            assert (await another.login("admin", WRONG_PASSWORD)).status == 401
            assert (await another.login("admin")).status == 429
        panel.clock.advance(retry_after)
        assert (await guesser.login("admin")).status == 303


async def test_invented_names_leave_no_counter_per_name(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="3",
        PROV_LOGIN_FAILURES_PER_ADDRESS="1000",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("ruth", Role.VIEWER)
    invented = [f"nobody{n:02d}" for n in range(50)]
    async with at(panel, ADDRESS_A) as guesser:
        for name in invented:
            assert (await guesser.login(name, WRONG_PASSWORD)).status == 401
    keys = await rate_keys(panel)
    assert all(key.startswith(f"rate:login-address:{ADDRESS_A}:") for key in keys), keys
    assert len(keys) == 1  # one window of one address
    assert not [key for key in keys if any(name in key for name in invented)]
    count = await panel.redis.get(f"{panel.namespace}:{keys[0]}")
    assert int(count) == 50  # every invented name still counted on the address
    # An existing account does get its counter.
    async with at(panel, ADDRESS_B) as other:
        assert (await other.login("ruth", WRONG_PASSWORD)).status == 401
    assert any(key.startswith("rate:login-account:ruth:") for key in await rate_keys(panel))


async def test_the_address_limit_still_stops_a_guesser_of_invented_names(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="1000",
        PROV_LOGIN_FAILURES_PER_ADDRESS="4",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("sven", Role.VIEWER)
    async with at(panel, ADDRESS_A) as guesser, at(panel, ADDRESS_B) as owner:
        for n in range(4):
            assert (await guesser.login(f"invented{n}", WRONG_PASSWORD)).status == 401
        blocked = await guesser.login("invented-next", WRONG_PASSWORD)
        assert blocked.status == 429
        retry_after = int(blocked.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        assert (await guesser.login("sven")).status == 429  # any name, from that address
        assert (await owner.login("sven")).status == 303  # another address is not touched
        assert not [key for key in await rate_keys(panel) if "invented" in key]
        panel.clock.advance(retry_after)
        assert (await guesser.login("sven")).status == 303
