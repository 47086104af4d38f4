"""Fixtures of the browser tests: one real `provision up`, one chromium per module, pages.

`system` runs for the whole session: every test makes its own jobs, so none depends on
another. The browser is module-scoped, so the tests of a module share its event loop
(`pytest.mark.asyncio(loop_scope="module")` in each module). Without /usr/bin/chromium the
tests skip with the reason; CI's PROV_TESTS_STRICT=1 turns that skip into a failure.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    StorageState,
    ViewportSize,
    async_playwright,
)

from tests.browser.support import (
    CHROMIUM,
    CSP_LISTENER,
    DESKTOP,
    LAUNCH_ARGS,
    PageProblems,
    System,
    install_app,
    log_in,
    processes_mentioning,
    wait_for_badge,
    write_test_apps,
)

OpenPage = Callable[..., Awaitable[Page]]


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """`provision up` with the test apps, ready; stopped with SIGINT, leaving nothing behind."""
    root = tmp_path_factory.mktemp("browser-up")
    installers = root / "installers"
    write_test_apps(installers)
    running = System(root=root, installers=installers)
    running.start()
    try:
        running.wait_ready()
        yield running
    finally:
        code = running.stop()
        assert code == 0, running.output()
        deadline = time.monotonic() + 10
        while leftovers := processes_mentioning(str(running.data_dir)):
            assert time.monotonic() < deadline, f"left running after provision up: {leftovers}"
            time.sleep(0.2)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless; never one downloaded by `playwright install`."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def signed_in(browser: Browser, system: System) -> StorageState:
    """Log in as `admin` through the login form once per module; the cookies to reuse."""
    context = await browser.new_context(base_url=system.url)
    try:
        page = await context.new_page()
        await page.goto("/login")
        await log_in(page)
        return await context.storage_state()
    finally:
        await context.close()


@pytest.fixture
def page_problems() -> PageProblems:
    """What the pages this test opens log: console errors, exceptions, CSP violations."""
    return PageProblems()


@pytest_asyncio.fixture(loop_scope="module")
async def open_page(
    browser: Browser,
    system: System,
    signed_in: StorageState,
    page_problems: PageProblems,
) -> AsyncIterator[OpenPage]:
    """Open a page in a fresh context (viewport, colour scheme); fail on anything it logs.

    Every console error, uncaught exception and CSP violation of every page the test opened
    fails the test at teardown, so each test also checks the pages it visits stay clean.
    """
    contexts: list[BrowserContext] = []

    async def open_(
        *,
        viewport: ViewportSize = DESKTOP,
        color_scheme: Any = "light",
        phone: bool = False,
    ) -> Page:
        context = await browser.new_context(
            base_url=system.url,
            storage_state=signed_in,
            viewport=viewport,
            color_scheme=color_scheme,
            is_mobile=phone,
            has_touch=phone,
            device_scale_factor=2 if phone else 1,
            locale="en-GB",
            timezone_id="UTC",
        )
        context.set_default_timeout(15_000)
        await context.add_init_script(CSP_LISTENER)
        contexts.append(context)
        page = await context.new_page()
        page_problems.watch(page)
        return page

    yield open_
    found = list(page_problems.found)
    for context in contexts:
        await context.close()
    assert not found, "pages logged problems:\n" + "\n".join(found)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def finished_jobs(
    browser: Browser, system: System, signed_in: StorageState
) -> dict[str, str]:
    """Finished jobs, made through the form: `succeeded` (after a retry), `failed`, and
    `long-log` (thirteen lines, one of them very long)."""
    context = await browser.new_context(base_url=system.url, storage_state=signed_in)
    try:
        runs = {
            "succeeded": ("flaky", "Install Flaky", "Succeeded"),
            "failed": ("broken-config", "Install Broken config", "Failed"),
            "long-log": ("ticker", "Install Ticker", "Succeeded"),
        }
        pages = {name: await context.new_page() for name in runs}
        jobs = {
            name: await install_app(pages[name], app_id, button)
            for name, (app_id, button, _) in runs.items()
        }
        for name, (_, _, badge) in runs.items():
            await wait_for_badge(pages[name], badge)
        return jobs
    finally:
        await context.close()
