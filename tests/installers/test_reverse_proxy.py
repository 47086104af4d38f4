"""installers/reverse-proxy through the real agent: Caddy as a reverse proxy / static site.

Runs real services on this machine (marked `installers` and `slow`). A tiny upstream
(python's http.server in a thread, on a free port) stands for the proxied application.
One test walks the whole life cycle, because each install costs an apt run: proxy mode with
non-default inputs, an idempotent second run, a reconfiguration applied by a graceful
reload (same Caddy process), an upstream URL that the form accepts but Caddy refuses (exit
3, the previous config keeps serving), static mode serving the title, and the uninstall.
Teardown uninstalls with REMOVE_DATA=true, so the machine is left as found.
"""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import InstallerRun, port_open, run_uninstall, wait_port

pytestmark = [pytest.mark.installers, pytest.mark.slow]

APP = "reverse-proxy"
CADDYFILE = Path("/etc/caddy/provision.Caddyfile")
PID_FILE = Path("/run/provision/provision-caddy.pid")
UPSTREAM_BODY = b"hello from the upstream\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(UPSTREAM_BODY)))
        self.end_headers()
        self.wfile.write(UPSTREAM_BODY)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def upstream() -> Iterator[int]:
    """A tiny HTTP server on 127.0.0.1:<free port>, for Caddy to proxy to."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def get(port: int) -> tuple[int, dict[str, str], bytes]:
    url = f"http://127.0.0.1:{port}/"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, dict(response.headers), response.read()


def daemon_pid() -> str:
    return PID_FILE.read_text().strip()


def read(path: Path) -> str:
    return path.read_text()


def exists(path: Path | str) -> bool:
    return Path(path).exists()


@pytest.fixture
def cleanup(installers_machine: None) -> Iterator[None]:
    yield
    # Uninstall reads no inputs, but they must validate: static mode needs none.
    done = run_uninstall(APP, {"mode": "static"}, extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr


def proxy_inputs(port: int, upstream_url: str, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "mode": "proxy",
        "listen_port": port,
        "upstream_url": upstream_url,
        "security_headers": True,
    }
    base.update(changes)
    return base


async def test_reverse_proxy_life_cycle(
    installer_run: InstallerRun, upstream: int, cleanup: None
) -> None:
    first_port, second_port, static_port = free_port(), free_port(), free_port()
    assert len({first_port, second_port, static_port}) == 3
    upstream_url = f"http://127.0.0.1:{upstream}"

    # 1. Proxy mode with non-default inputs: requests reach the upstream, headers added.
    first = await installer_run(APP, proxy_inputs(first_port, upstream_url))
    assert first.state == "succeeded", first.text
    status, headers, body = get(first_port)
    assert (status, body) == (200, UPSTREAM_BODY)
    assert headers.get("X-Frame-Options") == "DENY"
    assert headers.get("X-Content-Type-Options") == "nosniff"
    pid = daemon_pid()

    # 2. The same inputs again: nothing changes, Caddy is not reloaded.
    again = await installer_run(APP, proxy_inputs(first_port, upstream_url))
    assert again.state == "succeeded", again.text
    assert again.has_line(f"unchanged {CADDYFILE}"), again.text
    assert not again.has_line("updated "), again.text
    assert not again.has_line("reloading"), again.text
    assert daemon_pid() == pid

    # 3. Changed inputs: another port, no extra headers; applied by a graceful reload,
    # so the same Caddy process serves the new port.
    changed = await installer_run(
        APP, proxy_inputs(second_port, upstream_url, security_headers=False)
    )
    assert changed.state == "succeeded", changed.text
    assert changed.has_line(f"updated {CADDYFILE}"), changed.text
    assert not await wait_port("127.0.0.1", first_port, open_=False)
    status, headers, body = get(second_port)
    assert (status, body) == (200, UPSTREAM_BODY)
    assert "X-Frame-Options" not in headers
    assert daemon_pid() == pid
    good_config = read(CADDYFILE)

    # 4. An upstream URL the form accepts but Caddy refuses (upstreams take no path):
    # `caddy validate` fails, exit 3, and the previous config stays and keeps serving.
    broken = await installer_run(APP, proxy_inputs(second_port, f"{upstream_url}/app"))
    assert (broken.state, broken.reason, broken.exit_code) == ("failed", "config_error", "3"), (
        broken.text
    )
    assert broken.has_line("only support scheme, host, and port"), broken.text
    assert read(CADDYFILE) == good_config
    assert not exists(f"{CADDYFILE}.prov-bak")
    assert get(second_port)[2] == UPSTREAM_BODY
    assert daemon_pid() == pid

    # 5. Static mode: a generated page with the title, in its folder under
    # /var/www/provision-site.
    title = "Tom & Jerry's test page"
    static_inputs = {
        "mode": "static",
        "listen_port": static_port,
        "site_name": "itest",
        "site_title": title,
        "security_headers": True,
    }
    static = await installer_run(APP, static_inputs)
    assert static.state == "succeeded", static.text
    status, headers, body = get(static_port)
    assert status == 200
    assert "<title>Tom &amp; Jerry&#39;s test page</title>" in body.decode()
    assert headers.get("X-Frame-Options") == "DENY"
    assert exists("/var/www/provision-site/itest/index.html")
    assert not await wait_port("127.0.0.1", second_port, open_=False)

    # 6. The uninstall stops Caddy and removes the package it installed.
    done = run_uninstall(APP, static_inputs, extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", static_port, open_=False)
    assert not port_open("127.0.0.1", static_port)
    assert not exists(CADDYFILE)
    assert not exists("/var/www/provision-site")
    assert not exists("/usr/bin/caddy")
