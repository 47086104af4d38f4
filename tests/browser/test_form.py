"""The install form in a real browser: live `visible_if`, submitting, and the server's errors."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.browser.support import JOB_PATH

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def test_the_conditional_field_appears_when_its_checkbox_is_ticked_and_the_form_submits(
    open_page,
):
    page = await open_page()
    await page.goto("/apps/website")
    banner_field = page.locator('[data-field="banner_text"]')
    banner = page.get_by_label("Banner text")

    await expect(banner_field).to_be_hidden()
    await expect(banner).to_be_disabled()
    await page.get_by_label("Show a banner").check()
    await expect(banner_field).to_be_visible()
    await expect(banner).to_be_enabled()
    await page.get_by_label("Show a banner").uncheck()
    await expect(banner_field).to_be_hidden()
    await page.get_by_label("Show a banner").check()

    await page.get_by_label("Site title").fill("My Site 2")
    await banner.fill("Opening soon")
    await page.get_by_label("Admin password").fill("correct horse")
    await page.get_by_role("button", name="Install Website").click()

    await expect(page).to_have_url(JOB_PATH)
    await expect(page.get_by_role("heading", level=1)).to_contain_text("Website")
    await expect(page.locator("#job-badge")).to_have_text("Succeeded")
    await expect(page.locator("#log")).to_contain_text(
        "site: My Site 2 (banner: true) on port 8080"
    )


async def test_values_the_server_refuses_come_back_as_inline_errors_with_a_422(open_page):
    page = await open_page()
    await page.goto("/apps/website")
    await page.get_by_label("Site title").fill("2 fast")  # must start with a letter
    await page.get_by_label("Show a banner").check()  # banner text left empty: required
    await page.get_by_label("HTTP port").fill("9090")
    await page.get_by_label("Admin password").fill("secret")  # shorter than 8
    # The browser would stop this submit itself; the test turns its checks off to reach the
    # server's (this is the test driving the page, not page script).
    await page.evaluate("() => { document.getElementById('install-form').noValidate = true; }")

    async with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/apps/website/install")
    ) as answer:
        await page.get_by_role("button", name="Install Website").click()
    assert (await answer.value).status == 422
    await page.wait_for_load_state()

    summary = page.get_by_role("alert")
    await expect(summary).to_be_visible()
    await expect(summary).to_contain_text("There are 3 problems with your answers")
    await expect(summary).to_be_focused()
    for field, message in [
        ("site_title", "a letter, then letters, digits and spaces"),
        ("banner_text", re.compile("required", re.IGNORECASE)),
        ("admin_password", re.compile("8")),
    ]:
        control = page.locator(f"#field-{field}")
        error = page.locator(f"#field-{field}-error")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text(message)
        await expect(control).to_have_attribute("aria-invalid", "true")
        await expect(control).to_have_attribute(
            "aria-describedby", re.compile(f"field-{field}-error")
        )
        # next to its field: inside the same field wrapper
        wrapper = page.locator(f'[data-field="{field}"]')
        await expect(wrapper.locator(".field-error")).to_have_count(1)
        await expect(summary.locator(f'a[href="#field-{field}"]')).to_have_count(1)

    await expect(page.get_by_label("Site title")).to_have_value("2 fast")
    await expect(page.get_by_label("Show a banner")).to_be_checked()
    await expect(page.get_by_label("Banner text")).to_be_visible()
    await expect(page.get_by_label("HTTP port")).to_have_value("9090")
    await expect(page.get_by_label("Admin password")).to_have_value("")
    assert "secret" not in await page.content()
