"""What the browser tests share: the system under test, its apps, and what pages report.

`provision up` runs for real (Redis, panel, agent) with the throw-away apps written by
`write_test_apps`; the tests drive Debian's chromium through Playwright and never download a
browser. Everything here is plain helpers; the fixtures are in `conftest.py`.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from playwright.async_api import ConsoleMessage, Error, Page, ViewportSize

from panel.web.login import LOGIN_COOKIE
from tests.agent_support import write_app

CHROMIUM: Final = Path("/usr/bin/chromium")
LAUNCH_ARGS: Final = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO_ROOT: Final = Path(__file__).resolve().parents[2]
SCREENSHOTS: Final = REPO_ROOT / "test-artifacts" / "screenshots"
AXE_JS: Final = Path(__file__).parent / "vendor" / "axe-core" / "axe.min.js"

ADMIN_USER: Final = "admin"
ADMIN_PASSWORD: Final = "browser-tests-admin-password"  # a throw-away system

DESKTOP: Final = ViewportSize(width=1280, height=900)
PHONE: Final = ViewportSize(width=375, height=812)

# A job page's address: /jobs/ and a ULID (Crockford base32, 26 characters).
JOB_PATH: Final = re.compile(r"/jobs/[0-9A-HJKMNP-TV-Z]{26}$")

# A long unbroken line, as installers print (URLs, hashes): a phone must wrap or scroll it
# inside the log, never widen the page.
LONG_LINE: Final = "fetched https://downloads.example.com/releases/" + "a1b2c3d4" * 16 + ".tar.gz"


# --- the apps the tests install --------------------------------------------------------------

ICON_SVG: Final = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64">'
    '<rect width="64" height="64" rx="12" fill="#2750c4"/>'
    '<path d="M14 22h36v24H14z" fill="#fff"/></svg>\n'
)


def write_test_apps(installers: Path) -> None:
    """The catalogue the browser tests see: a form app, a slow logger, a flaky, a failing and
    a broken one."""
    website = write_app(
        installers,
        "website",
        'echo "site: $SITE_TITLE (banner: $ENABLE_BANNER) on port $HTTP_PORT"',
        name="Website",
        category="web",
        description="A static web site with an optional banner.",
        icon="icon.svg",
        inputs=[
            {
                "name": "site_title",
                "type": "string",
                "label": "Site title",
                "help": "Shown in the browser tab.",
                "required": True,
                "placeholder": "My site",
                "validation": {
                    "pattern": "[A-Za-z][A-Za-z0-9 ]{0,39}",
                    "pattern_message": "a letter, then letters, digits and spaces",
                },
            },
            {"name": "enable_banner", "type": "boolean", "label": "Show a banner"},
            {
                "name": "banner_text",
                "type": "string",
                "label": "Banner text",
                "required": True,
                "visible_if": {"enable_banner": "true"},
            },
            {
                "name": "http_port",
                "type": "port",
                "label": "HTTP port",
                "default": 8080,
                "validation": {"min": 1024},
            },
            {
                "name": "admin_password",
                "type": "password",
                "label": "Admin password",
                "required": True,
                "validation": {"min_length": 8},
            },
        ],
    )
    (website / "icon.svg").write_text(ICON_SVG)
    write_app(
        installers,
        "ticker",
        # One line every 0.3 s for about 3.6 s: long enough to watch the log grow.
        f'echo "{LONG_LINE}"\nfor i in $(seq 1 12); do echo "tick $i"; sleep 0.3; done',
        name="Ticker",
        description="Prints a line every 0.3 seconds, then succeeds.",
    )
    write_app(
        installers,
        "flaky",
        # The first attempt fails with a temporary error (exit 2) after a second, so the page
        # is open before the retry wait starts; the second one succeeds.
        'echo "attempt $PROV_ATTEMPT"\n'
        'if [ "$PROV_ATTEMPT" = 1 ]; then sleep 1; echo "mirror unreachable" >&2; exit 2; fi\n'
        'echo "installed"',
        name="Flaky",
        description="Fails once with a temporary error, then succeeds.",
        retry={"max_retries": 2, "base_delay": 2, "factor": 1},
    )
    write_app(
        installers,
        "broken-config",
        'echo "checking configuration"; echo "config test failed" >&2; exit 3',
        name="Broken config",
        description="Always fails with a configuration error.",
    )
    write_app(installers, "invalid-app", "true", name="Invalid app", colour="red")


# --- provision up ----------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class System:
    """One `provision up` process (Redis, panel, agent) and what it was given."""

    root: Path
    installers: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The panel's base URL."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        """Where `provision up` keeps Redis data, the key file and the CLI token."""
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        """The combined output of `provision up` and its children."""
        return self.root / "up.log"

    def start(self) -> None:
        """Start `python -m core up` with a free port, its own data folder and the test apps."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "PROV_DATA_DIR": str(self.data_dir),
            "PROV_PANEL_PORT": str(self.port),
            "PROV_INSTALLERS_DIR": str(self.installers),
            "PROV_LEASE_S": "3",
            "PROV_KILL_GRACE_S": "1",
            "PROV_SHUTDOWN_GRACE_S": "5",
            # docs/architecture.md §7: `provision up` creates the `admin` user with this password.
            "PROV_ADMIN_PASSWORD": ADMIN_PASSWORD,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "core", "up"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def ready(self) -> bool:
        """Whether the panel answers /readyz with 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Poll /readyz until it answers 200; fail with the output if the process ends."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None:
                raise AssertionError(f"provision up exited early:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"provision up not ready in {timeout_s}s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGINT, as Ctrl-C does; return the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout=60)

    def output(self) -> str:
        """What `provision up` printed."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def processes_mentioning(text: str) -> list[str]:
    """Live processes whose command line or environment contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (text in cmdline or text.encode() in environ):
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


# --- what a page reports ---------------------------------------------------------------------

# Chromium logs a CSP violation as a console error, but only for what it blocks; the DOM event
# also covers report-only policies. An init script is injected over the DevTools protocol, so
# no CSP applies to it.
CSP_LISTENER: Final = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(
    `CSP violation: ${event.violatedDirective} blocked ${event.blockedURI || "inline"}` +
      ` (${event.disposition})`,
  );
});
"""


# Chromium logs every document answered with an error status; the form's 422 re-render is
# the designed answer to invalid input (docs/architecture.md §7), not a problem of the page.
EXPECTED_422: Final = re.compile(r"/apps/[a-z0-9][a-z0-9_-]*/install$")


def _expected(message: ConsoleMessage) -> bool:
    return bool(
        message.text.startswith(
            "Failed to load resource: the server responded with a status of 422"
        )
        and EXPECTED_422.search(message.location.get("url", ""))
    )


@dataclass
class PageProblems:
    """Console errors, uncaught exceptions and CSP violations of every page in a context."""

    found: list[str] = field(default_factory=list)

    def watch(self, page: Page) -> None:
        """Record what `page` reports from now on."""

        def on_console(message: ConsoleMessage) -> None:
            if message.type in {"error", "assert"} and not _expected(message):
                self.found.append(f"console {message.type} on {page.url}: {message.text}")

        def on_page_error(error: Error) -> None:
            self.found.append(f"uncaught {error.name} on {page.url}: {error.message}")

        page.on("console", on_console)
        page.on("pageerror", on_page_error)


# --- checks run inside the page --------------------------------------------------------------

HORIZONTAL_OVERFLOW_JS: Final = """
() => {
  const root = document.scrollingElement;
  const wide = [];
  for (const node of document.body.querySelectorAll("*")) {
    const box = node.getBoundingClientRect();
    if (box.width && box.right > root.clientWidth + 1) {
      wide.push(`${node.tagName.toLowerCase()}${node.id ? "#" + node.id : ""}` +
        `${node.className && typeof node.className === "string" ? "." +
          node.className.trim().split(/\\s+/).join(".") : ""} right=${Math.round(box.right)}`);
    }
  }
  return {
    scrollWidth: root.scrollWidth,
    clientWidth: root.clientWidth,
    widest: wide.slice(0, 8),
  };
}
"""

FOCUS_STYLE_JS: Final = """
() => {
  const el = document.activeElement;
  if (!el || el === document.body) return null;
  const styleOf = (style) => ({
    outline: style.outlineStyle !== "none" && parseFloat(style.outlineWidth) > 0,
    shadow: style.boxShadow !== "none",
  });
  const own = styleOf(getComputedStyle(el));
  const after = styleOf(getComputedStyle(el, "::after"));
  const describe = el.id ? `#${el.id}` : (el.getAttribute("href") || el.textContent.trim());
  return {
    tag: el.tagName.toLowerCase(),
    id: el.id,
    name: el.getAttribute("name") || "",
    text: el.textContent.trim().slice(0, 60),
    describe: `${el.tagName.toLowerCase()} ${describe}`.slice(0, 80),
    focusVisible: el.matches(":focus-visible"),
    indicated: own.outline || own.shadow || after.outline || after.shadow,
  };
}
"""

AXE_RUN_JS: Final = """
async () => {
  const result = await axe.run(document, { resultTypes: ["violations"] });
  return result.violations.map((v) => ({
    id: v.id,
    impact: v.impact,
    help: v.help,
    nodes: v.nodes.map((n) => ({ target: n.target.join(" "), summary: n.failureSummary })),
  }));
}
"""

SERIOUS: Final = {"serious", "critical"}


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Run axe-core on the page; return its violations of impact serious or critical.

    axe goes in with `evaluate`, which no Content-Security-Policy applies to (a script tag
    would be refused once the panel's strict CSP lands, and logged as a violation).
    """
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(AXE_JS.read_text())
    violations: list[dict[str, Any]] = await page.evaluate(AXE_RUN_JS)
    return [v for v in violations if v["impact"] in SERIOUS]


def describe_violations(violations: list[dict[str, Any]]) -> str:
    """One line per rule and element, for an assertion message."""
    lines = []
    for violation in violations:
        for node in violation["nodes"]:
            lines.append(
                f"{violation['id']} ({violation['impact']}): {node['target']}"
                f" - {violation['help']}; {node['summary']}".replace("\n", " ")
            )
    return "\n".join(lines)


def screenshot_path(name: str) -> Path:
    """Where a CI artifact screenshot goes (test-artifacts/screenshots/, created)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


# --- what a user does ------------------------------------------------------------------------


async def log_in(page: Page) -> None:
    """Log in as `admin` with the login form the page shows; fail with its message if refused.

    The form must carry its CSRF token (a hidden `_csrf` field) and the page must have set
    the pre-session cookie it is bound to, which is gone once logged in.
    """
    token = page.locator('form[action="/login"] input[type="hidden"][name="_csrf"]')
    assert await token.count() == 1, "the login form has no hidden CSRF token field"
    assert len(await token.input_value()) >= 32, "the login form's CSRF token is empty"
    pre_session = [c for c in await page.context.cookies() if c.get("name") == LOGIN_COOKIE]
    assert len(pre_session) == 1, "the login page set no pre-session cookie"
    cookie = pre_session[0]
    assert (cookie.get("httpOnly"), cookie.get("sameSite"), cookie.get("path")) == (
        True,
        "Strict",
        "/login",
    ), cookie
    await page.get_by_label("User name").fill(ADMIN_USER)
    await page.get_by_label("Password").fill(ADMIN_PASSWORD)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Log in").click()
    if urlsplit(page.url).path == "/login":
        refused = await page.get_by_role("alert").all_inner_texts()
        raise AssertionError(f"cannot log in as {ADMIN_USER} (PROV_ADMIN_PASSWORD): {refused}")
    left = [c for c in await page.context.cookies() if c.get("name") == LOGIN_COOKIE]
    assert left == [], f"the pre-session cookie outlived the login: {left}"


async def install_app(page: Page, app_id: str, button: str) -> str:
    """Open the app's form, press its install button; return the job page's path."""
    await page.goto(f"/apps/{app_id}")
    await page.get_by_role("button", name=button).click()
    await page.wait_for_url(JOB_PATH)
    return urlsplit(page.url).path


async def wait_for_badge(page: Page, text: str, timeout_ms: float = 30_000) -> None:
    """Wait until the job page's state badge reads `text`."""
    await page.locator("#job-badge", has_text=text).wait_for(timeout=timeout_ms)


async def submit_form_with_errors(page: Page) -> None:
    """Send the website form with three values only the server refuses; await its 422 page."""
    await page.goto("/apps/website")
    await page.get_by_label("Site title").fill("2 fast")
    await page.get_by_label("Show a banner").check()
    await page.get_by_label("Admin password").fill("short")
    await page.evaluate("() => { document.getElementById('install-form').noValidate = true; }")
    async with page.expect_navigation() as navigation:
        await page.get_by_role("button", name="Install Website").click()
    answer = await navigation.value
    assert answer is not None and answer.status == 422, answer
    await page.get_by_role("alert").wait_for()
