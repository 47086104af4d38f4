"""The job page stays live over SSE: the badge, the log and the retry countdown change in place.

Each test sets a marker on `window` before it waits; the marker still being there at the end
proves the page was never reloaded, and no navigation event fired either.
"""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect

from tests.browser.support import JOB_PATH

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LOG_LINES = "#log .log-line"

# Every state the badge shows, in order, recorded from the page itself, so a short-lived state
# is seen even if a poll from the test would fall between two changes.
RECORD_STATES = """
() => {
  window.__noReload = "still here";
  const badge = document.getElementById("job-badge");
  window.__badges = [badge.textContent.trim()];
  new MutationObserver(() => {
    const text = badge.textContent.trim();
    if (window.__badges.at(-1) !== text) window.__badges.push(text);
  }).observe(badge, { childList: true, characterData: true, subtree: true });
}
"""


async def install(page: Page, app_name: str) -> list[str]:
    """Submit the app's form (it has no inputs); land on its job page; count navigations."""
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    await page.goto(f"/apps/{app_name.lower()}")
    await page.get_by_role("button", name=f"Install {app_name}").click()
    await expect(page).to_have_url(JOB_PATH)
    await page.evaluate(RECORD_STATES)
    navigations.clear()
    return navigations


async def test_the_log_grows_and_the_badge_changes_without_a_reload(open_page):
    page = await open_page()
    navigations = await install(page, "Ticker")
    badge = page.locator("#job-badge")
    lines = page.locator(LOG_LINES)

    await expect(badge).to_have_text("Running")
    await expect(page.locator("#job-live")).to_have_text("Live")
    await expect(lines.filter(has_text="tick 2")).to_have_count(1)
    seen = await lines.count()
    await page.wait_for_function(
        "seen => document.querySelectorAll('#log .log-line').length > seen", arg=seen
    )
    await expect(badge).to_have_text("Succeeded", timeout=20_000)

    await expect(lines).to_have_count(13)  # the long line and 12 ticks, none twice
    await expect(page.locator("#success-info")).to_be_visible()
    await expect(page.locator("#cancel-form")).to_have_count(0)
    await expect(page.locator("#job-live")).to_have_text("Finished")
    assert await page.evaluate("() => window.__noReload") == "still here"
    assert navigations == []
    badges = await page.evaluate("() => window.__badges")
    assert badges[-2:] == ["Running", "Succeeded"], badges


async def test_a_temporary_failure_counts_down_to_the_retry_then_succeeds(open_page):
    page = await open_page()
    navigations = await install(page, "Flaky")
    badge = page.locator("#job-badge")

    await expect(badge).to_have_text("Waiting to retry")
    await expect(page.locator("#retry-info")).to_be_visible()
    await expect(page.locator("#retry-attempt")).to_have_text("1")
    await expect(page.locator("#retry-countdown")).to_have_text(
        re.compile(r"^(in [12] s|due now)$")
    )
    await expect(page.locator("#log")).to_contain_text("mirror unreachable")

    await expect(badge).to_have_text("Succeeded", timeout=20_000)
    await expect(page.locator("#retry-info")).to_be_hidden()
    await expect(page.locator("#job-attempt-number")).to_have_text("2")
    await expect(page.locator("#log .log-sep")).to_have_text(["Attempt 1", "Attempt 2"])
    await expect(page.locator("#log")).to_contain_text("installed")
    assert await page.evaluate("() => window.__noReload") == "still here"
    assert navigations == []
    badges = await page.evaluate("() => window.__badges")
    assert "Waiting to retry" in badges and badges[-1] == "Succeeded", badges
    assert "Running" in badges[badges.index("Waiting to retry") :], badges
