"""Pages fit a phone's width (375 x 812) without sideways scrolling; full-page screenshots of
each, on desktop and phone, light and dark, are saved as CI artifacts under
test-artifacts/screenshots/."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.support import (
    DESKTOP,
    HORIZONTAL_OVERFLOW_JS,
    PHONE,
    screenshot_path,
    submit_form_with_errors,
    wait_for_badge,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("device", ["phone", "desktop"])
async def test_pages_fit_the_screen_without_sideways_scrolling(
    open_page, finished_jobs, device, scheme
):
    phone = device == "phone"
    page = await open_page(viewport=PHONE if phone else DESKTOP, color_scheme=scheme, phone=phone)
    overflowing: dict[str, Any] = {}

    async def check(name: str) -> None:
        # The screenshot comes first, so the artifact shows what the assertion is about.
        await page.screenshot(path=screenshot_path(f"{name}-{device}-{scheme}"), full_page=True)
        sizes = await page.evaluate(HORIZONTAL_OVERFLOW_JS)
        if phone:
            assert sizes["clientWidth"] == PHONE["width"], sizes  # the layout is phone-wide
        if sizes["scrollWidth"] > sizes["clientWidth"]:
            overflowing[name] = sizes

    await page.goto("/")
    await check("catalogue")
    await submit_form_with_errors(page)
    await check("form-with-errors")
    for name, job in [("job-retried", "succeeded"), ("job-long-log", "long-log")]:
        await page.goto(finished_jobs[job])
        await wait_for_badge(page, "Succeeded")
        await check(name)
    await page.context.clear_cookies()
    await page.goto("/login")
    await check("login")

    assert not overflowing, f"wider than the {device} screen: {overflowing}"
