"""A user's whole round through the panel logs no console error, no uncaught exception and no
Content-Security-Policy violation, on any page."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import expect

from tests.browser.support import (
    CSP_LISTENER,
    PageProblems,
    install_app,
    log_in,
    submit_form_with_errors,
    wait_for_badge,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


async def test_a_round_through_every_page_logs_no_errors_or_csp_violations(
    open_page, page_problems, finished_jobs
):
    page = await open_page()
    await page.context.clear_cookies()  # a session of its own, since it ends by logging out
    visited = []

    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login\?next=(%2F|/)$"))
    visited.append(page.url)
    await log_in(page)
    await expect(page).to_have_url(re.compile(r"/$"))
    await page.get_by_role("searchbox", name="Search").fill("tick")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("status")).to_contain_text("1 of 5 apps match")
    visited.append(page.url)
    await submit_form_with_errors(page)
    visited.append(page.url)
    await install_app(page, "ticker", "Install Ticker")
    await wait_for_badge(page, "Succeeded")
    visited.append(page.url)
    for path in [finished_jobs["failed"], finished_jobs["succeeded"], "/jobs", "/agents"]:
        await page.goto(path)
        await expect(page.locator("main h1")).to_be_visible()
        visited.append(page.url)
    job_id = finished_jobs["succeeded"].rsplit("/", 1)[1]
    await page.goto(f"/apps/flaky?from={job_id}")  # "Run again"
    await expect(page.get_by_text("Filled in from job")).to_be_visible()
    visited.append(page.url)
    await page.get_by_role("button", name="Log out").click()  # a POST carrying the CSRF token
    await expect(page).to_have_url(re.compile(r"/login$"))
    visited.append(page.url)

    assert not page_problems.found, f"visited {visited}:\n" + "\n".join(page_problems.found)


async def test_the_watch_reports_a_csp_violation(browser):
    # The check above can only pass for the right reason if the watch sees violations.
    context = await browser.new_context()
    try:
        await context.add_init_script(CSP_LISTENER)
        page = await context.new_page()
        problems = PageProblems()
        problems.watch(page)
        await page.route(
            "http://csp.test/",
            lambda route: route.fulfill(
                content_type="text/html",
                headers={"Content-Security-Policy": "script-src 'none'"},
                body="<!doctype html><title>probe</title><script>1</script>",
            ),
        )
        async with page.expect_console_message(lambda m: "CSP violation" in m.text):
            await page.goto("http://csp.test/")
        assert any("CSP violation: script-src" in found for found in problems.found), problems
    finally:
        await context.close()
