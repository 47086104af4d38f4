"""installers/nginx through a real agent: install, idempotent re-run, reconfigure, rejected
inputs with the previous config still serving, uninstall.

Ports 18088/18089/18443 keep clear of anything a user runs; every test uninstalls in its
teardown (REMOVE_DATA=true), so the machine is left as found.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import (
    InstallerRun,
    Result,
    RunUninstall,
    port_open,
    run_uninstall,
    wait_port,
)

APP = "nginx"
SITE = Path("/etc/nginx/sites-available/provision.conf")
TLS_KEY = Path("/etc/nginx/provision-tls/server.key")
TLS_CERT = Path("/etc/nginx/provision-tls/server.crt")
PID_FILE = Path("/run/nginx.pid")
BASE = {
    "server_name": "site.provision.test",
    "http_port": 18088,
    "enable_tls": True,
    "https_port": 18443,
    "tls_common_name": "site.provision.test",
    "client_max_body_size_mb": 20,
}


def get(port: int, host: str, *, tls: bool = False) -> tuple[int, str]:
    """GET / with a Host header; (status, body)."""
    connection: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    else:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": host})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def read_text(path: Path) -> str:
    return path.read_text()


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def exists(path: Path) -> bool:
    return path.exists()


def mode_of(path: Path) -> int:
    return path.stat().st_mode & 0o777


def master_pid() -> int:
    return int(PID_FILE.read_text().strip())


def cert_subject() -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(TLS_CERT), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def dpkg_installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.stdout == "install ok installed"


@pytest.fixture
def nginx_preinstalled() -> bool:
    return dpkg_installed("nginx")


@pytest.fixture
def cleanup(run_uninstall: RunUninstall, nginx_preinstalled: bool) -> Iterator[None]:
    yield
    result = run_uninstall(APP, BASE, extra_env={"REMOVE_DATA": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert dpkg_installed("nginx") == nginx_preinstalled  # removed only if we installed it


def assert_succeeded(result: Result) -> None:
    assert (result.state, result.exit_code) == ("succeeded", "0"), result.text
    assert result.triggers[-1] == "succeed", result.text


async def test_install_rerun_unchanged_then_reconfigure(
    installer_run: InstallerRun, cleanup: None, nginx_preinstalled: bool
) -> None:
    first = await installer_run(APP, BASE)
    assert_succeeded(first)  # the manifest's verify ran and passed, or this would be failed
    if not nginx_preinstalled:
        # Our nginx: Debian's placeholder site (port 80) is not enabled.
        assert not exists(Path("/etc/nginx/sites-enabled/default"))
        assert first.has_line("installing nginx"), first.text
    status, body = get(18088, "site.provision.test")
    assert status == 200 and "<h1>site.provision.test</h1>" in body
    assert get(18443, "site.provision.test", tls=True)[0] == 200
    assert "site.provision.test" in cert_subject()
    assert mode_of(TLS_KEY) == 0o600
    assert "client_max_body_size 20m;" in read_text(SITE)
    pid = master_pid()

    again = await installer_run(APP, BASE)
    assert_succeeded(again)
    assert again.has_line(f"unchanged {SITE}"), again.text
    assert not again.has_line("updated "), again.text
    assert again.has_line("nginx is running and nothing changed"), again.text
    assert not again.has_line("reloading") and not again.has_line("restarting"), again.text
    assert not again.has_line("installing nginx"), again.text
    assert master_pid() == pid

    moved = await installer_run(APP, {**BASE, "http_port": 18089})
    assert_succeeded(moved)
    assert moved.has_line(f"updated {SITE}"), moved.text
    assert moved.has_line("reloading nginx"), moved.text
    assert get(18089, "site.provision.test")[0] == 200
    assert not await wait_port("127.0.0.1", 18088, open_=False)
    assert master_pid() == pid  # a reload, not a restart


async def test_rejected_inputs_fail_with_config_error_and_keep_serving(
    installer_run: InstallerRun, cleanup: None
) -> None:
    assert_succeeded(await installer_run(APP, BASE))
    good_config = read_text(SITE)

    def still_serving() -> None:
        assert SITE.read_text() == good_config
        assert get(18088, "site.provision.test")[0] == 200
        assert get(18443, "site.provision.test", tls=True)[0] == 200

    # A certificate name openssl refuses (a CN is at most 64 characters; a host name is not).
    long_name = ".".join(["a" * 40, "b" * 40])
    refused = await installer_run(APP, {**BASE, "tls_common_name": long_name})
    assert (refused.state, refused.reason, refused.exit_code) == ("failed", "config_error", "3")
    assert refused.has_line("openssl could not make a certificate"), refused.text
    assert len([e for e in refused.events if e.trigger == "start"]) == 1  # never retried
    still_serving()

    # A port another program holds.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("0.0.0.0", 18089))
        holder.listen()
        taken = await installer_run(APP, {**BASE, "http_port": 18089})
    assert (taken.state, taken.reason, taken.exit_code) == ("failed", "config_error", "3")
    assert taken.has_line("port 18089 is already used by another program"), taken.text
    still_serving()

    # nginx -t fails (here: a broken file someone else left in conf.d): the new site config
    # is rolled back and nginx is not reloaded.
    broken = Path("/etc/nginx/conf.d/zz-provision-test-broken.conf")
    write_text(broken, "this is not nginx syntax\n")
    try:
        rejected = await installer_run(APP, {**BASE, "client_max_body_size_mb": 30})
    finally:
        unlink(broken)
    assert (rejected.state, rejected.reason, rejected.exit_code) == (
        "failed",
        "config_error",
        "3",
    )
    assert rejected.has_line(f"restored {SITE}"), rejected.text
    assert rejected.has_line("nginx rejected the new configuration"), rejected.text
    still_serving()
    assert not exists(Path(f"{SITE}.prov-bak"))


async def test_uninstall_removes_the_site_and_closes_the_ports(
    installer_run: InstallerRun, nginx_preinstalled: bool
) -> None:
    assert_succeeded(await installer_run(APP, BASE))
    assert port_open("127.0.0.1", 18088)
    result = run_uninstall(APP, BASE, extra_env={"REMOVE_DATA": "true"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert not await wait_port("127.0.0.1", 18088, open_=False)
    assert not await wait_port("127.0.0.1", 18443, open_=False)
    assert not exists(SITE) and not exists(TLS_KEY)
    assert not exists(Path("/var/www/provision-nginx"))
    assert dpkg_installed("nginx") == nginx_preinstalled
    # Uninstalling again is fine (nothing left to remove).
    again = run_uninstall(APP, BASE, extra_env={"REMOVE_DATA": "true"})
    assert again.returncode == 0, again.stdout + again.stderr
