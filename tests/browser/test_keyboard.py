"""Keyboard use: Tab from the top meets the skip link first, then each control in reading
order, and every stop shows where the focus is."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.browser.support import FOCUS_STYLE_JS, wait_for_badge

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

FORM_CONTROLS = [
    "field-site_title",
    "field-enable_banner",
    "field-http_port",
    "field-admin_password",
]
MAX_STOPS = 60


async def tab(page: Page) -> dict[str, Any]:
    """Press Tab; describe what has the focus now and how it is shown."""
    await page.keyboard.press("Tab")
    focused: dict[str, Any] | None = await page.evaluate(FOCUS_STYLE_JS)
    assert focused is not None, "Tab left the focus nowhere"
    return focused


async def tab_until(page: Page, stop: str) -> list[dict[str, Any]]:
    """Tab until the focused element's description contains `stop`; every stop on the way."""
    stops = []
    for _ in range(MAX_STOPS):
        stops.append(await tab(page))
        if stop in stops[-1]["describe"] or stop == stops[-1]["text"]:
            return stops
    raise AssertionError(f"{stop!r} not reached in {MAX_STOPS} Tabs: {stops}")


def unmarked(stops: list[dict[str, Any]]) -> list[str]:
    """The stops whose focus is not visible: neither :focus-visible nor an outline/shadow."""
    return [s["describe"] for s in stops if not (s["focusVisible"] and s["indicated"])]


async def test_tab_reaches_the_skip_link_first_then_the_form_controls_in_order(open_page):
    page = await open_page()
    await page.goto("/apps/website")

    first = await tab(page)
    assert (first["tag"], first["text"]) == ("a", "Skip to main content"), first
    skip = page.get_by_role("link", name="Skip to main content")
    box = await skip.bounding_box()
    assert box is not None and box["y"] >= 0, f"the focused skip link is off screen: {box}"
    await expect(skip).to_be_in_viewport()

    stops = [first, *await tab_until(page, "Install Website")]
    ids = [s["id"] for s in stops if s["id"] in FORM_CONTROLS]
    assert ids == FORM_CONTROLS, [s["describe"] for s in stops]
    assert "field-banner_text" not in [s["id"] for s in stops]  # hidden, so not a Tab stop
    after_password = [s["describe"] for s in stops][[s["id"] for s in stops].index(ids[-1]) + 1 :]
    assert after_password[0].startswith("summary"), after_password  # "Advanced"
    assert not unmarked(stops), f"no visible focus on: {unmarked(stops)}"


async def test_the_skip_link_moves_the_focus_past_the_header(open_page):
    page = await open_page()
    await page.goto("/apps/website")
    await tab(page)
    await page.keyboard.press("Enter")
    await expect(page.locator("main")).to_be_focused()
    after = await tab(page)
    assert after["text"] == "Catalogue" and after["describe"].startswith("a"), after
    assert await page.locator("header").evaluate("(h) => !h.contains(document.activeElement)")


async def test_ticking_the_checkbox_by_keyboard_puts_the_conditional_field_next(open_page):
    page = await open_page()
    await page.goto("/apps/website")
    await tab_until(page, "#field-enable_banner")
    await page.keyboard.press("Space")
    await expect(page.get_by_label("Show a banner")).to_be_checked()
    following = await tab(page)
    assert following["id"] == "field-banner_text", following
    assert following["focusVisible"] and following["indicated"], following


@pytest.mark.parametrize("where", ["catalogue", "job"])
async def test_every_tab_stop_shows_a_focus_indicator(open_page, finished_jobs, where):
    page = await open_page()
    if where == "catalogue":
        await page.goto("/")
    else:
        await page.goto(finished_jobs["succeeded"])
        await wait_for_badge(page, "Succeeded")
    stops = await tab_until(page, "JSON API")  # the footer's link, the last stop
    assert stops[0]["text"] == "Skip to main content", stops[0]
    assert not unmarked(stops), f"no visible focus on: {unmarked(stops)}"
    if where == "catalogue":
        assert {"/apps/website", "/apps/ticker"} <= {s["describe"][2:] for s in stops}
    else:
        assert "div #log" in [s["describe"] for s in stops]  # the log scrolls by keyboard
