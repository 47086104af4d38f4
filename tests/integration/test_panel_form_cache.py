"""The blank install form is rendered once per app version and role; each user still gets a
page with their own name and their own session's CSRF token, and an edited app shows.

The panel, the fake clock and the fixtures come from test_access.py.
"""

from __future__ import annotations

from html import unescape

import pytest

from panel.auth.access import Role
from tests.agent_support import wait_until, write_app
from tests.integration import test_access as shared
from tests.integration.test_access import APP, CSRF_INPUT, Browser

cheap_argon2 = shared.cheap_argon2
installers = shared.installers
make_panel = shared.make_panel
panel = shared.panel

pytestmark = pytest.mark.redis

FORM = f"/apps/{APP}"


async def form_of(browser: Browser) -> str:
    response = await browser.get(FORM)
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.charset == "utf-8"
    return await response.text()


def csrf_on(page: str) -> set[str]:
    return {unescape(found) for found in CSRF_INPUT.findall(page)}


async def test_users_of_one_role_get_one_form_each_with_their_own_name_and_csrf_token(panel):
    ann = await panel.browser("annabel", Role.OPERATOR)
    bart = await panel.browser("bartholomew", Role.OPERATOR)
    ann_page, bart_page = await form_of(ann), await form_of(bart)
    ann_csrf, bart_csrf = await ann.csrf("/"), await bart.csrf("/")  # as another page has it
    assert ann_csrf != bart_csrf
    assert csrf_on(ann_page) == {ann_csrf}
    assert csrf_on(bart_page) == {bart_csrf}
    assert "Signed in as annabel" in ann_page and "bartholomew" not in ann_page
    assert "Signed in as bartholomew" in bart_page and "annabel" not in bart_page
    as_bart = ann_page.replace(ann_csrf, bart_csrf).replace("annabel", "bartholomew")
    assert as_bart == bart_page


async def test_the_csrf_token_of_a_shared_form_lets_its_own_session_submit(panel):
    cy = await panel.browser("cy", Role.OPERATOR)
    await form_of(await panel.browser("dee", Role.OPERATOR))  # the form is rendered already
    (token,) = csrf_on(await form_of(cy))
    sent = await cy.post(f"/apps/{APP}/install", data={"port": "8081", "_csrf": token})
    assert sent.status == 303
    assert await panel.job_count() == 1


async def test_each_role_gets_the_form_its_role_allows(panel):
    viewer = await form_of(await panel.browser("eve", Role.VIEWER))
    operator = await form_of(await panel.browser("fin", Role.OPERATOR))
    admin = await form_of(await panel.browser("gil", Role.ADMIN))
    assert "may look at this app but not install it" in viewer
    assert 'id="install-form"' not in viewer
    assert 'id="install-form"' in operator and 'id="install-form"' in admin
    assert 'href="/agents"' in admin
    assert 'href="/agents"' not in operator and 'href="/agents"' not in viewer


async def test_a_role_change_shows_on_the_very_next_form(panel):
    hal = await panel.browser("hal", Role.OPERATOR)
    assert 'id="install-form"' in await form_of(hal)
    await panel.users.set_role("hal", Role.VIEWER)
    assert 'id="install-form"' not in await form_of(hal)


async def test_an_edited_app_shows_on_the_form_without_a_restart(panel, installers):
    ivy = await panel.browser("ivy", Role.OPERATOR)
    assert "Install Hello" in await form_of(ivy)
    write_app(installers, APP, "exit 0", name="Hello Again")

    async def renamed() -> bool:
        return "Install Hello Again" in await form_of(ivy)

    await wait_until(renamed, timeout_s=10, message="the form shows the app's new name")
