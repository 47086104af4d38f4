"""Access control as a browser meets it: login, sessions, CSRF, login limits, a secret's path.

Every login first GETs the form, as a browser does, for its pre-session cookie and CSRF token
(`Panel.login`); the tests of that token itself post exactly the fields and cookies they mean.

The panel, the fake clock, the cookie-carrying `Browser` and the fixtures come from
test_access.py (imported below); see its docstring for how the tests talk to the panel.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html import unescape
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import ClientResponse

from agent.worker import Agent
from core.runtime.logging_setup import configure_logging
from core.runtime.redis_launcher import start_redis
from core.runtime.settings import AgentSettings
from panel import appkeys
from panel.auth.access import Role
from panel.auth.sessions import COOKIE_NAME
from panel.web.login import FORM_EXPIRED, LOGIN_COOKIE, LOGIN_FORM_MAX_S, form_token
from tests.agent_support import agent_environ, wait_until, write_app
from tests.auth_support import TEST_PASSWORD, LoginForm, bearer, login_form_of
from tests.integration import test_access as shared
from tests.integration.test_access import (
    APP,
    CSRF_INPUT,
    EVIL,
    RETURNED_HTTP_EXCEPTION,
    Browser,
    Panel,
    dump_namespace,
    login_next,
)

# test_access.py's fixtures, bound here so that pytest finds them for this module too
# (`cheap_argon2` is autouse).
cheap_argon2 = shared.cheap_argon2
installers = shared.installers
make_panel = shared.make_panel
panel = shared.panel

pytestmark = pytest.mark.redis

CANARY_APP = "canary"


def browser_target(location: str, base: str = "http://panel.test/login") -> str:
    """Where a browser goes for a `Location`: the host, after the URL parser's clean-ups.

    Browsers drop tabs and newlines from a URL and read `\\` as `/` in http(s) URLs, so
    `/\\evil.example` and `/<TAB>/evil.example` both mean `//evil.example`.
    """
    cleaned = re.sub(r"[\t\n\r]", "", location.strip(" \x00")).replace("\\", "/")
    return urlsplit(urljoin(base, cleaned)).netloc


# --- login and logout ------------------------------------------------------------------------


async def test_logging_in_and_out_raises_no_deprecation_warning(panel):
    await panel.add_user("abel", Role.VIEWER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        browser = await panel.browser("abel")
        token = await browser.csrf("/")
        assert (await browser.post("/logout", data={"_csrf": token})).status == 303
    assert [str(w.message) for w in caught if RETURNED_HTTP_EXCEPTION in str(w.message)] == []


async def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(panel):
    await panel.add_user("alice-real", Role.VIEWER)
    form = await panel.login_form()  # one form, so even the fresh token is the same
    wrong = await panel.login("alice-real", "not the right password", form=form)
    unknown = await panel.login("alice-fake", TEST_PASSWORD, form=form)
    assert wrong.status == unknown.status == 401
    assert COOKIE_NAME not in wrong.cookies and COOKIE_NAME not in unknown.cookies
    wrong_text = (await wrong.text()).replace("alice-real", "NAME")
    unknown_text = (await unknown.text()).replace("alice-fake", "NAME")
    assert wrong_text == unknown_text
    assert "Wrong user name or password." in wrong_text


async def test_a_right_password_redirects_to_next_with_a_locked_down_cookie(panel):
    await panel.add_user("bob", Role.VIEWER)
    response = await panel.login("bob", next_path="/jobs?state=queued")
    assert response.status == 303
    assert response.headers["Location"] == "/jobs?state=queued"
    cookie = response.cookies[COOKIE_NAME]
    assert len(cookie.value) >= 32
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"
    assert cookie["path"] == "/"
    assert not cookie["secure"]
    raw = response.headers["Set-Cookie"]
    assert "HttpOnly" in raw and "SameSite=Lax" in raw and "Path=/" in raw
    pre_session = response.cookies[LOGIN_COOKIE]  # the login form's cookie is done with
    assert pre_session.value == "" and pre_session["max-age"] in ("0", 0)
    assert pre_session["path"] == "/login"
    page = await Browser(panel, cookie.value).get("/jobs")
    assert page.status == 200


async def test_the_cookie_is_secure_when_prov_cookie_secure_is_true(make_panel):
    panel = await make_panel(PROV_COOKIE_SECURE="true")
    await panel.add_user("carol", Role.VIEWER)
    form = await panel.client.get("/login")
    assert form.cookies[LOGIN_COOKIE]["secure"] is True
    response = await panel.login("carol")
    assert response.status == 303
    assert response.cookies[COOKIE_NAME]["secure"] is True
    assert "Secure" in response.headers["Set-Cookie"]


@pytest.mark.parametrize(
    "next_path",
    [
        "//evil.example",
        "https://evil.example",
        "http://evil.example/login",
        "javascript:alert(1)",
        "evil.example",
        "///evil.example",
        "\\\\evil.example",
        "/\\evil.example",
        "/\\/evil.example",
        "/%09/evil.example",
    ],
)
async def test_next_never_redirects_off_site(panel, next_path):
    await panel.add_user("dave", Role.VIEWER)
    response = await panel.login("dave", next_path=next_path)
    assert response.status == 303
    location = response.headers["Location"]
    assert location.startswith("/")
    assert browser_target(location) == "panel.test", location
    if "evil.example" in location:
        return  # kept as a harmless path on this site (e.g. /%5Cevil.example)
    assert location == "/"
    form = await panel.client.get("/login", params={"next": next_path})
    assert 'name="next" value="/"' in await form.text()


@pytest.mark.parametrize(
    "next_path", ["/\t/evil.example", "/\n/evil.example", "/\r\n/evil.example"]
)
async def test_next_with_a_tab_or_newline_trick_stays_on_site(panel, next_path):
    await panel.add_user("erin", Role.VIEWER)
    response = await panel.login("erin", next_path=next_path)
    assert response.status == 303
    assert browser_target(response.headers["Location"]) == "panel.test", response.headers


async def test_a_session_id_present_before_login_is_never_reused(panel):
    await panel.add_user("frank", Role.OPERATOR)
    first = await panel.browser("frank")
    again = await panel.login("frank", cookie=first.cookie)
    assert again.status == 303
    second = again.cookies[COOKIE_NAME].value
    assert second != first.cookie
    assert (await first.get("/")).status == 303  # the old session is gone
    assert (await Browser(panel, second).get("/")).status == 200
    planted = "planted-by-someone-else-0123456789abcdef"
    fixed = await panel.login("frank", cookie=planted)
    assert fixed.cookies[COOKIE_NAME].value != planted
    assert (await Browser(panel, planted).get("/")).status == 303


async def test_logout_needs_the_csrf_token_and_ends_the_session(panel):
    browser = await panel.browser("grace", Role.VIEWER)
    token = await browser.csrf("/")
    refused = await browser.post("/logout", data={})
    assert refused.status == 403
    wrong = await browser.post("/logout", data={"_csrf": "x" + token})
    assert wrong.status == 403
    assert (await browser.get("/")).status == 200  # still logged in
    done = await browser.post("/logout", data={"_csrf": token})
    assert done.status == 303
    assert done.headers["Location"] == "/login"
    cleared = done.cookies[COOKIE_NAME]
    assert cleared.value == "" and cleared["max-age"] in ("0", 0)
    after = await browser.get("/")
    assert after.status == 303
    assert login_next(after.headers["Location"]) == "/"


# --- session timeouts ------------------------------------------------------------------------


SHORT_SESSIONS = {"PROV_SESSION_IDLE_S": "60", "PROV_SESSION_MAX_S": "300"}


async def test_a_session_idle_past_its_timeout_goes_back_to_login(make_panel):
    panel = await make_panel(**SHORT_SESSIONS)
    browser = await panel.browser("henry", Role.VIEWER)
    panel.clock.advance(59)
    assert (await browser.get("/jobs")).status == 200
    panel.clock.advance(61)
    response = await browser.get("/jobs")
    assert response.status == 303
    assert login_next(response.headers["Location"]) == "/jobs"
    api = await browser.get("/api/jobs")
    assert api.status == 401


async def test_activity_within_the_idle_window_keeps_a_session_alive(make_panel):
    panel = await make_panel(**SHORT_SESSIONS)
    browser = await panel.browser("iris", Role.VIEWER)
    for _ in range(4):  # 200 s in all, more than three idle timeouts
        panel.clock.advance(50)
        assert (await browser.get("/")).status == 200


async def test_a_session_ends_at_its_absolute_timeout_whatever_the_activity(make_panel):
    panel = await make_panel(**SHORT_SESSIONS)
    browser = await panel.browser("jack", Role.VIEWER)
    for _ in range(6):  # up to exactly 300 s, active every 50 s
        panel.clock.advance(50)
        assert (await browser.get("/")).status == 200
    panel.clock.advance(1)
    assert (await browser.get("/")).status == 303
    panel.clock.advance(-250)  # and it stays gone, even if the clock says otherwise
    assert (await browser.get("/")).status == 303


async def test_a_session_follows_the_users_current_role_and_ends_with_the_user(panel):
    browser = await panel.browser("otto", Role.ADMIN)
    assert (await browser.get("/agents")).status == 200
    await panel.users.set_role("otto", Role.VIEWER)
    assert (await browser.get("/agents")).status == 403
    assert (await browser.get("/jobs")).status == 200
    assert await panel.users.remove("otto")
    gone = await browser.get("/jobs")
    assert gone.status == 303
    assert login_next(gone.headers["Location"]) == "/jobs"


NEW_PASSWORD = "a brand new passphrase 42"


async def test_a_password_change_ends_the_users_sessions(panel):
    browser = await panel.browser("pia", Role.VIEWER)
    assert (await browser.get("/")).status == 200
    panel.clock.now = time.time()  # set_password stamps the change with the real time
    await panel.users.set_password("pia", NEW_PASSWORD)
    panel.clock.advance(5)
    assert (await browser.get("/")).status == 303
    assert (await panel.login("pia")).status == 401  # the old password is gone too
    response = await panel.login("pia", NEW_PASSWORD)
    assert response.status == 303
    assert (await Browser(panel, response.cookies[COOKIE_NAME].value).get("/")).status == 200


async def test_a_login_right_after_a_password_change_gives_a_working_session(panel):
    await panel.add_user("quin", Role.VIEWER)
    now = time.time()
    await asyncio.sleep(math.ceil(now) - now + 0.02)  # just past a second boundary
    await panel.users.set_password("quin", NEW_PASSWORD)
    panel.clock.now = time.time()  # the panel runs on the real clock in production
    response = await panel.login("quin", NEW_PASSWORD)
    assert response.status == 303
    assert (await Browser(panel, response.cookies[COOKIE_NAME].value).get("/")).status == 200


# --- CSRF and origin -------------------------------------------------------------------------


@dataclass
class CsrfSetup:
    panel: Panel
    browser: Browser
    form_token: str
    job_id: str


@pytest.fixture
async def csrf_setup(panel: Panel) -> CsrfSetup:
    admin = await panel.token("root", Role.ADMIN)
    job_id = await panel.submit(admin)
    browser = await panel.browser("kate", Role.OPERATOR)
    return CsrfSetup(panel, browser, await browser.csrf(f"/apps/{APP}"), job_id)


CSRF_ATTACKS: dict[str, Callable[[str], tuple[str | None, dict[str, str]]]] = {
    # name -> (token to send, or None for none; extra headers)
    "no_token": lambda token: (None, {}),
    "a_wrong_token": lambda token: (token[::-1], {}),
    "an_empty_token": lambda token: ("", {}),
    "a_foreign_origin": lambda token: (token, {"Origin": EVIL}),
    "a_null_origin": lambda token: (token, {"Origin": "null"}),
    "sec_fetch_site_cross_site": lambda token: (token, {"Sec-Fetch-Site": "cross-site"}),
    "sec_fetch_site_same_site": lambda token: (token, {"Sec-Fetch-Site": "same-site"}),
}


@pytest.mark.parametrize("attack", sorted(CSRF_ATTACKS))
async def test_a_cookie_post_is_refused_and_changes_nothing_with(csrf_setup, attack):
    setup = csrf_setup
    token, headers = CSRF_ATTACKS[attack](setup.form_token)
    form_token = {} if token is None else {"_csrf": token}
    header_token = {} if token is None else {"X-CSRF-Token": token}
    before = await setup.panel.job_count()
    answers = {
        "form install": await setup.browser.post(
            f"/apps/{APP}/install", data={"port": "8081", **form_token}, headers=headers
        ),
        "form cancel": await setup.browser.post(
            f"/jobs/{setup.job_id}/cancel", data=form_token, headers=headers
        ),
        "api install": await setup.browser.post(
            "/api/install",
            json={"app_id": APP, "inputs": {}},
            headers={**headers, **header_token},
        ),
        "api cancel": await setup.browser.post(
            f"/api/jobs/{setup.job_id}/cancel", headers={**headers, **header_token}
        ),
    }
    assert {name: answer.status for name, answer in answers.items()} == dict.fromkeys(answers, 403)
    assert (await answers["api install"].json())["error"] == "forbidden"
    assert await setup.panel.job_count() == before
    job = await setup.panel.job_state(setup.job_id)
    assert job["state"] == "queued"
    assert job.get("cancel_requested", "") in ("", "0")


async def test_the_right_csrf_token_lets_the_cookie_session_submit_and_cancel(csrf_setup):
    setup = csrf_setup
    panel, browser = setup.panel, setup.browser
    same_origin = {"Origin": f"http://{panel.host}", "Sec-Fetch-Site": "same-origin"}
    form = await browser.post(
        f"/apps/{APP}/install",
        data={"port": "8081", "_csrf": setup.form_token},
        headers=same_origin,
    )
    assert form.status == 303, await form.text()
    assert form.headers["Location"].startswith("/jobs/")
    api = await browser.post(
        "/api/install",
        json={"app_id": APP, "inputs": {}},
        headers={"X-CSRF-Token": setup.form_token},
    )
    assert api.status == 201, await api.text()
    assert await panel.job_count() == 3
    cancel_token = await browser.csrf(f"/jobs/{setup.job_id}")
    assert cancel_token == setup.form_token  # one token per session
    cancelled = await browser.post(f"/jobs/{setup.job_id}/cancel", data={"_csrf": cancel_token})
    assert cancelled.status == 303
    job = await panel.job_state(setup.job_id)
    assert (job["state"], job["reason"]) == ("failed", "cancelled")


async def test_a_bearer_token_post_needs_no_csrf_token_even_with_a_foreign_origin(csrf_setup):
    panel = csrf_setup.panel
    token = await panel.token("luke", Role.OPERATOR)
    response = await panel.client.post(
        "/api/install",
        json={"app_id": APP, "inputs": {}},
        headers={**bearer(token), "Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
    )
    assert response.status == 201
    cancel = await panel.client.post(f"/api/jobs/{csrf_setup.job_id}/cancel", headers=bearer(token))
    assert cancel.status == 202


async def test_a_session_csrf_token_does_not_work_for_another_session(csrf_setup):
    other = await csrf_setup.panel.browser("mona", Role.OPERATOR)
    response = await other.post(
        f"/apps/{APP}/install", data={"port": "8081", "_csrf": csrf_setup.form_token}
    )
    assert response.status == 403
    assert await csrf_setup.panel.job_count() == 1


@pytest.mark.parametrize("where", ["form field", "header"])
async def test_a_non_ascii_csrf_token_is_a_403_not_a_crash(csrf_setup, where):
    browser = csrf_setup.browser
    if where == "form field":
        response = await browser.post(
            f"/apps/{APP}/install", data={"port": "8081", "_csrf": "jeton-é"}
        )
    else:
        response = await browser.post(
            "/api/install", json={"app_id": APP}, headers={"X-CSRF-Token": "jeton-é"}
        )
    assert response.status == 403
    assert await csrf_setup.panel.job_count() == 1


@pytest.mark.parametrize(
    "headers", [{"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"}]
)
async def test_a_cross_site_login_post_is_refused(panel, headers):
    await panel.add_user("nina", Role.VIEWER)
    response = await panel.login("nina", headers=headers)
    assert response.status == 403
    assert COOKIE_NAME not in response.cookies
    assert [key async for key in panel.redis.scan_iter(f"{panel.namespace}:session:*")] == []
    same = await panel.login("nina", headers={"Origin": f"http://{panel.host}"})
    assert same.status == 303


# --- the login form's own CSRF token ---------------------------------------------------------


async def keys_matching(panel: Panel, pattern: str) -> list[bytes]:
    return [key async for key in panel.redis.scan_iter(f"{panel.namespace}:{pattern}")]


def set_cookie_names(response: ClientResponse) -> list[str]:
    return [raw.split("=", 1)[0] for raw in response.headers.getall("Set-Cookie", [])]


def panel_form_secret(panel: Panel) -> bytes:
    return panel.client.app[appkeys.RING]().signing_secret


def flipped(token: str) -> str:
    """`token` with its last character changed (still well-formed)."""
    return token[:-1] + ("A" if token[-1] != "A" else "B")


async def test_the_login_form_sets_a_locked_down_pre_session_cookie_and_a_keyed_token(panel):
    response = await panel.client.get("/login")
    assert response.status == 200
    form = login_form_of(response, await response.text())
    cookie = response.cookies[LOGIN_COOKIE]
    assert len(form.cookie) >= 43
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/login"
    assert int(cookie["max-age"]) == LOGIN_FORM_MAX_S
    assert not cookie["secure"]
    assert form.cookie not in form.token  # bound to the cookie by a key, not a copy of it
    again = await panel.client.get("/login", headers=form.headers())
    kept = login_form_of(again, await again.text())
    assert kept.cookie == form.cookie  # a second tab keeps the first tab's form valid
    assert (await panel.login_form()).cookie != form.cookie  # another browser, another nonce
    assert await keys_matching(panel, "*") == []  # nothing in Redis for anonymous visitors


LoginAttack = Callable[[Panel, LoginForm, LoginForm], tuple[dict[str, str], dict[str, str]]]


def nora(form: LoginForm, token: str | None) -> dict[str, str]:
    """The right user name and password, with `token` as the CSRF field (None: no field)."""
    fields = form.fields("nora", TEST_PASSWORD, "/jobs")
    if token is None:
        del fields["_csrf"]
    else:
        fields["_csrf"] = token
    return fields


def expired(panel: Panel, mine: LoginForm) -> tuple[dict[str, str], dict[str, str]]:
    panel.clock.advance(LOGIN_FORM_MAX_S + 1)
    return nora(mine, mine.token), mine.headers()


LOGIN_CSRF_ATTACKS: dict[str, LoginAttack] = {
    # name -> (fields, headers) from the panel, this browser's form and another browser's
    "no_token": lambda panel, mine, theirs: (nora(mine, None), mine.headers()),
    "an_empty_token": lambda panel, mine, theirs: (nora(mine, ""), mine.headers()),
    "a_wrong_token": lambda panel, mine, theirs: (nora(mine, flipped(mine.token)), mine.headers()),
    "no_cookie": lambda panel, mine, theirs: (nora(mine, mine.token), {}),
    "neither": lambda panel, mine, theirs: (nora(mine, None), {}),
    "a_token_of_another_browsers_cookie": lambda panel, mine, theirs: (
        nora(mine, theirs.token),
        mine.headers(),
    ),
    "the_cookie_copied_as_token": lambda panel, mine, theirs: (
        nora(mine, mine.cookie),
        mine.headers(),
    ),
    "a_token_under_a_key_the_panel_lacks": lambda panel, mine, theirs: (
        nora(mine, form_token(b"k" * 32, mine.cookie, int(panel.clock()))),
        mine.headers(),
    ),
    "a_token_from_the_future": lambda panel, mine, theirs: (
        nora(mine, form_token(panel_form_secret(panel), mine.cookie, int(panel.clock()) + 3600)),
        mine.headers(),
    ),
    "an_expired_form": lambda panel, mine, theirs: expired(panel, mine),
    "a_non_ascii_token": lambda panel, mine, theirs: (nora(mine, "jeton-é"), mine.headers()),
}


@pytest.mark.parametrize("attack", sorted(LOGIN_CSRF_ATTACKS))
async def test_a_login_post_without_the_right_csrf_token_is_a_403_and_opens_no_session(
    panel, attack
):
    await panel.add_user("nora", Role.VIEWER)
    mine, theirs = await panel.login_form(), await panel.login_form()
    fields, headers = LOGIN_CSRF_ATTACKS[attack](panel, mine, theirs)
    response = await panel.post_login(fields, headers)
    assert response.status == 403
    html = await response.text()
    assert FORM_EXPIRED in html
    assert COOKIE_NAME not in set_cookie_names(response)
    assert await keys_matching(panel, "session:*") == []
    assert await keys_matching(panel, "rate:*") == []  # not counted as a failed login
    retry = login_form_of(response, html)  # the page re-rendered with a fresh, valid form
    assert retry.token != fields.get("_csrf")
    again = await panel.login("nora", form=retry)
    assert again.status == 303
    assert len(await keys_matching(panel, "session:*")) == 1


async def test_the_right_cookie_and_token_log_in_with_one_session(panel):
    await panel.add_user("olaf", Role.VIEWER)
    form = await panel.login_form()
    response = await panel.login("olaf", form=form)
    assert response.status == 303
    assert response.cookies[COOKIE_NAME].value
    assert len(await keys_matching(panel, "session:*")) == 1
    # The token is exactly the documented HMAC of the cookie under the panel's own key.
    made = form_token(panel_form_secret(panel), form.cookie, int(panel.clock()))
    assert (await panel.login("olaf", form=LoginForm(form.cookie, made))).status == 303


async def test_a_csrf_refused_login_is_no_failed_attempt_and_runs_no_password_check(
    make_panel, monkeypatch
):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="2",
        PROV_LOGIN_FAILURES_PER_ADDRESS="2",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("omar", Role.VIEWER)
    checked: list[str] = []
    authenticate = panel.users.authenticate

    async def counting(name: str, password: str) -> Any:
        checked.append(name)
        return await authenticate(name, password)

    monkeypatch.setattr(panel.users, "authenticate", counting)
    form = await panel.login_form()
    for _ in range(5):
        refused = await panel.post_login(
            {"username": "omar", "password": "wrong password!"}, form.headers()
        )
        assert refused.status == 403
    assert checked == []  # no argon2 ran
    assert await keys_matching(panel, "rate:*") == []
    assert (await panel.login("omar")).status == 303
    # Real failures still count: two wrong passwords, and the third try is refused.
    for _ in range(2):
        assert (await panel.login("omar", "wrong password!")).status == 401
    assert (await panel.login("omar")).status == 429


async def test_every_re_rendered_login_form_carries_a_token_that_logs_in(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="1",
        PROV_LOGIN_FAILURES_PER_ADDRESS="1000",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("pam", Role.VIEWER)
    wrong = await panel.login("pam", "wrong password!")
    assert wrong.status == 401
    after_401 = login_form_of(wrong, await wrong.text())
    blocked = await panel.login("pam", form=after_401)
    assert blocked.status == 429
    after_429 = login_form_of(blocked, await blocked.text())
    assert after_429.cookie == after_401.cookie  # the same browser keeps its nonce
    panel.clock.advance(int(blocked.headers["Retry-After"]))
    assert (await panel.login("pam", form=after_429)).status == 303


# --- rate limits -----------------------------------------------------------------------------


async def test_failed_logins_past_the_account_limit_get_429_until_the_window_passes(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="3",
        PROV_LOGIN_FAILURES_PER_ADDRESS="1000",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("uma", Role.VIEWER)
    for _ in range(3):
        assert (await panel.login("uma", "wrong password!")).status == 401
    blocked = await panel.login("uma")  # the right password, too late
    assert blocked.status == 429
    assert COOKIE_NAME not in blocked.cookies
    retry_after = int(blocked.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert "Too many failed attempts" in await blocked.text()
    assert (await panel.login("UMA")).status == 429  # names are case-insensitive
    panel.clock.advance(retry_after - 1)
    assert (await panel.login("uma")).status == 429
    panel.clock.advance(1)
    assert (await panel.login("uma")).status == 303


async def test_a_successful_login_clears_the_accounts_failures(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="3", PROV_LOGIN_FAILURES_PER_ADDRESS="1000"
    )
    await panel.add_user("vera", Role.VIEWER)
    for _round in range(3):
        for _ in range(2):
            assert (await panel.login("vera", "wrong password!")).status == 401
        assert (await panel.login("vera")).status == 303


async def test_failed_logins_past_the_address_limit_get_429_for_any_account(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="1000",
        PROV_LOGIN_FAILURES_PER_ADDRESS="4",
        PROV_LOGIN_WINDOW_S="60",
    )
    await panel.add_user("walt", Role.VIEWER)
    for name in ("walt", "xena", "yuri", "zoe"):
        assert (await panel.login(name, "wrong password!")).status == 401
    blocked = await panel.login("walt")
    assert blocked.status == 429
    retry_after = int(blocked.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert (await panel.login("someone-new", "whatever it is")).status == 429
    panel.clock.advance(retry_after)
    assert (await panel.login("walt")).status == 303


async def test_concurrent_failed_logins_cannot_exceed_the_account_limit(make_panel):
    panel = await make_panel(
        PROV_LOGIN_FAILURES_PER_ACCOUNT="3", PROV_LOGIN_FAILURES_PER_ADDRESS="1000"
    )
    await panel.add_user("yann", Role.VIEWER)
    form = await panel.login_form()  # one form, so the thirty POSTs really run together
    answers = await asyncio.gather(
        *(panel.login("yann", f"guess number {n:04d}", form=form) for n in range(30))
    )
    statuses = sorted(answer.status for answer in answers)
    assert set(statuses) <= {401, 429}
    assert statuses.count(401) <= 3, statuses


# --- a password through the whole stack ------------------------------------------------------


async def test_a_password_reaches_the_installer_intact_and_rests_nowhere_in_clear(
    tmp_path, installers, make_panel, namespace, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    marker = f"canary{int(time.time() * 1000) % 10**9}Zq"
    pwned = tmp_path / "pwned"
    secret = f"p@ss'\"$(touch {pwned});`touch {pwned}`|&;<>*? {marker}"
    digest_file = tmp_path / "received.sha256"
    write_app(  # beside the other test app, in the folder the panel reads
        installers,
        CANARY_APP,
        f'printf %s "$PASSWORD" | sha256sum | cut -d" " -f1 > {digest_file}\n'
        'echo "$PASSWORD"\necho "password=$PASSWORD" >&2\n',
        inputs=[{"name": "password", "type": "password", "required": True}],
    )
    server = start_redis(tmp_path / "canary-redis", fsync="always")
    agent_client = aioredis.from_url(server.url, socket_timeout=10)
    agent: Agent | None = None
    task: asyncio.Task[None] | None = None
    try:
        with production_logging() as logged:
            panel = await make_panel(PROV_REDIS_URL=server.url)
            assert await panel.redis.config_get("appendfsync") == {"appendfsync": "always"}
            browser = await panel.browser("operator", Role.OPERATOR)
            form = await browser.get(f"/apps/{CANARY_APP}")
            csrf = CSRF_INPUT.search(await form.text())
            assert csrf is not None
            posted = await browser.post(
                f"/apps/{CANARY_APP}/install",
                data={"_csrf": unescape(csrf.group(1)), "password": secret, "_target": "local"},
            )
            assert posted.status == 303, await posted.text()
            job_id = posted.headers["Location"].removeprefix("/jobs/")
            settings = AgentSettings.from_env(
                agent_environ(
                    redis_url=server.url,
                    namespace=namespace,
                    keys_file=tmp_path / "hmac.keys",
                    installers=installers,
                    agent_id="agent-canary",
                )
            )
            ring = panel.client.app[appkeys.RING]
            agent = Agent(settings, agent_client, ring)
            task = asyncio.create_task(agent.run())

            async def ended() -> str | None:
                state = (await panel.job_state(job_id)).get("state")
                return state if state in ("succeeded", "failed") else None

            assert await wait_until(ended, timeout_s=20, message="the job ended") == "succeeded"
            answers = [
                await (await browser.get(path)).read()
                for path in (
                    f"/jobs/{job_id}",
                    f"/jobs/{job_id}/log.txt",
                    "/jobs",
                    f"/apps/{CANARY_APP}?from={job_id}",
                    f"/api/jobs/{job_id}",
                    f"/api/jobs/{job_id}/events",
                    f"/api/jobs/{job_id}/log",
                    "/api/jobs",
                )
            ]
            answers.append(await read_stream(browser, job_id))
            agent.stop()
            await asyncio.wait_for(task, timeout=30)
        assert digest_file.read_text().strip() == hashlib.sha256(secret.encode()).hexdigest()
        assert not pwned.exists(), "the password was run as shell code"
        log_api = json.loads(answers[6])["lines"]
        assert {line["stream"] for line in log_api} == {"stdout", "stderr"}
        assert all("***" in line["line"] for line in log_api), log_api
        assert len(answers[-1]) > 0 and b"event: log" in answers[-1]
        forms = {secret, marker, secret[:20]}
        for number, answer in enumerate(answers):
            for form_text in forms:
                assert form_text.encode() not in answer, (number, form_text)
        dump = await dump_namespace(panel.redis, namespace)
        assert job_id.encode() in dump
        for form_text in forms:
            assert form_text.encode() not in dump, form_text
        # The checks below must have something to look at: the agent's and the panel's logs.
        lines = [json.loads(line) for line in logged.getvalue().splitlines()]
        finished = [line for line in lines if line["event"] == "job.finished"]
        assert finished and finished[0].get("job_id") == job_id, lines
        assert "POST /apps/canary/install" in caplog.text
        printed = capsys.readouterr()
        texts = [logged.getvalue(), caplog.text, printed.out, printed.err]
        for text in texts:
            for form_text in forms:
                assert form_text not in text, form_text
        on_disk = [path for path in server.data_dir.rglob("*") if path.is_file()]
        disk = b"".join(path.read_bytes() for path in on_disk)
        assert job_id.encode() in disk, "the AOF holds nothing: the check would prove nothing"
        for form_text in forms:
            assert form_text.encode() not in disk, form_text
    finally:
        if agent is not None and task is not None and not task.done():
            agent.stop(immediate=True)
            await asyncio.wait_for(task, timeout=30)
        await agent_client.aclose()
        server.stop()


@contextmanager
def production_logging() -> Iterator[io.StringIO]:
    """structlog as `provision panel` and `provision agent` configure it (JSON lines, the
    contextvars merged in), written to a buffer; the previous configuration after."""
    previous = structlog.get_config()
    buffer = io.StringIO()
    configure_logging(level="debug", json=True, stream=buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**previous)


async def read_stream(browser: Browser, job_id: str) -> bytes:
    """The job's SSE stream until it has sent everything (an ended job's stream idles)."""
    chunks: list[bytes] = []
    async with browser.panel.client.get(
        f"/api/jobs/{job_id}/stream", headers=browser.headers()
    ) as response:
        assert response.status == 200
        while True:
            try:
                chunk = await asyncio.wait_for(response.content.readany(), timeout=0.5)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)
