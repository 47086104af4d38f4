"""axe-core finds no serious or critical accessibility problem on the panel's pages.

Every page is scanned in the light and the dark colour scheme, since the stylesheet changes
every colour with `prefers-color-scheme`. axe-core is vendored (tests/browser/vendor/).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from playwright.async_api import Page

from tests.browser.support import (
    axe_violations,
    describe_violations,
    submit_form_with_errors,
    wait_for_badge,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

Visit = Callable[[Page, dict[str, str]], Awaitable[None]]


async def login(page: Page, jobs: dict[str, str]) -> None:
    await page.context.clear_cookies()
    await page.goto("/login")


async def catalogue(page: Page, jobs: dict[str, str]) -> None:
    await page.goto("/")


async def form(page: Page, jobs: dict[str, str]) -> None:
    await page.goto("/apps/website")
    await page.get_by_label("Show a banner").check()  # the conditional field shown too


async def form_with_errors(page: Page, jobs: dict[str, str]) -> None:
    await submit_form_with_errors(page)


async def job_succeeded(page: Page, jobs: dict[str, str]) -> None:
    await page.goto(jobs["succeeded"])
    await wait_for_badge(page, "Succeeded")


async def job_failed(page: Page, jobs: dict[str, str]) -> None:
    await page.goto(jobs["failed"])
    await wait_for_badge(page, "Failed")


async def job_history(page: Page, jobs: dict[str, str]) -> None:
    await page.goto("/jobs")


async def agents(page: Page, jobs: dict[str, str]) -> None:
    await page.goto("/agents")


PAGES: dict[str, Visit] = {
    "login": login,
    "catalogue": catalogue,
    "form": form,
    "form-with-errors": form_with_errors,
    "job-succeeded": job_succeeded,
    "job-failed": job_failed,
    "job-history": job_history,
    "agents": agents,
}


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("name", list(PAGES))
async def test_the_page_has_no_serious_accessibility_violations(
    open_page, finished_jobs, name, scheme
):
    page = await open_page(color_scheme=scheme)
    await PAGES[name](page, finished_jobs)
    violations = await axe_violations(page)
    assert not violations, f"axe on {name} ({scheme}):\n{describe_violations(violations)}"
