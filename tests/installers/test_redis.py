"""installers/redis through the real agent: a separate, password-protected Redis instance.

Runs real services on this machine (marked `installers` and `slow` by conftest.py). Every
test uses its own port and removes its instance in teardown, data folder included, so the
machine is left as found; Debian's default instance (6379) is never touched.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import InstallerRun, RunUninstall, port_open, run_uninstall, wait_port

pytestmark = [pytest.mark.installers, pytest.mark.slow]

APP = "redis"
# Not a real secret: a throw-away password for a test instance on 127.0.0.1.
PASSWORD = "Tst-pw-" + "q7Zr9xK2mW4v"


def inputs(port: int, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "port": port,
        "password": PASSWORD,
        "maxmemory_mb": 64,
        "eviction_policy": "allkeys-lru",
        "persistence": "aof",
        "bind_address": "127.0.0.1",
    }
    base.update(changes)
    return base


def cli(port: int, *args: str, password: str = PASSWORD) -> str:
    """redis-cli against the instance; the password travels in REDISCLI_AUTH, never argv."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "REDISCLI_AUTH": password}
    done = subprocess.run(
        ["redis-cli", "--no-auth-warning", "-h", "127.0.0.1", "-p", str(port), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.strip()


def maxmemory(port: int) -> int:
    name, value = cli(port, "CONFIG", "GET", "maxmemory").splitlines()
    assert name == "maxmemory"
    return int(value)


def on_a_command_line(secret: str) -> bool:
    """True when any process's argv (what ps shows) contains `secret`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if secret.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def conf_mode_and_owner(port: int) -> tuple[str, str]:
    info = conf(port).stat()
    return oct(info.st_mode & 0o777), pwd.getpwuid(info.st_uid).pw_name


def server_pid(port: int) -> int:
    return int(Path(f"/run/redis/provision-{port}.pid").read_text().strip())


def data_dir(port: int) -> Path:
    return Path(f"/var/lib/redis/provision-{port}")


def conf(port: int) -> Path:
    return Path(f"/etc/redis/provision-{port}.conf")


@pytest.fixture
def port() -> Iterator[int]:
    """A free port for this test's instance; the instance and its data go in teardown."""
    chosen = 16380 + os.getpid() % 500
    while port_open("127.0.0.1", chosen):
        chosen += 1
    yield chosen
    run_uninstall(APP, {"port": chosen, "password": PASSWORD}, extra_env={"REMOVE_DATA": "true"})
    assert not port_open("127.0.0.1", chosen)
    assert not data_dir(chosen).exists()


async def test_install_is_idempotent_and_reconfigures(
    installer_run: InstallerRun, port: int
) -> None:
    first = await installer_run(APP, inputs(port))
    assert first.state == "succeeded", first.text
    assert maxmemory(port) == 64 * 1024 * 1024
    assert cli(port, "CONFIG", "GET", "maxmemory-policy").splitlines()[1] == "allkeys-lru"
    assert cli(port, "CONFIG", "GET", "appendonly").splitlines()[1] == "yes"
    # The password is required, and only the config file (0640, owner redis) holds it.
    assert "NOAUTH" in cli(port, "PING", password="")
    assert conf_mode_and_owner(port) == ("0o640", "redis")
    # The secret is used by the script (config, redis-cli) but never reaches the job log.
    assert PASSWORD not in first.text
    assert not on_a_command_line(PASSWORD)
    pid = server_pid(port)

    again = await installer_run(APP, inputs(port))
    assert again.state == "succeeded", again.text
    assert again.has_line(f"unchanged /etc/redis/provision-{port}.conf"), again.text
    assert not again.has_line("updated "), again.text
    assert server_pid(port) == pid
    assert PASSWORD not in again.text

    changed = await installer_run(
        APP, inputs(port, maxmemory_mb=128, eviction_policy="noeviction", persistence="rdb")
    )
    assert changed.state == "succeeded", changed.text
    assert changed.has_line(f"updated /etc/redis/provision-{port}.conf"), changed.text
    assert maxmemory(port) == 128 * 1024 * 1024
    assert cli(port, "CONFIG", "GET", "maxmemory-policy").splitlines()[1] == "noeviction"
    assert cli(port, "CONFIG", "GET", "appendonly").splitlines()[1] == "no"


async def test_a_rejected_config_fails_with_exit_3_and_keeps_the_old_one(
    installer_run: InstallerRun, port: int
) -> None:
    first = await installer_run(APP, inputs(port))
    assert first.state == "succeeded", first.text
    cli(port, "SET", "kept", "yes")
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: Redis cannot bind it.
    broken = await installer_run(
        APP, inputs(port, maxmemory_mb=200, bind_address="custom", bind_custom="192.0.2.1")
    )
    assert (broken.state, broken.reason, broken.exit_code) == ("failed", "config_error", "3"), (
        broken.text
    )
    assert broken.has_line("restored /etc/redis/provision-"), broken.text
    assert PASSWORD not in broken.text
    assert await wait_port("127.0.0.1", port)
    assert maxmemory(port) == 64 * 1024 * 1024
    assert cli(port, "GET", "kept") == "yes"
    assert "bind 127.0.0.1" in conf(port).read_text()


async def test_uninstall_keeps_data_unless_asked(
    installer_run: InstallerRun, run_uninstall: RunUninstall, port: int
) -> None:
    first = await installer_run(APP, inputs(port, persistence="rdb"))
    assert first.state == "succeeded", first.text
    cli(port, "SET", "k", "v")
    cli(port, "SAVE")

    done = run_uninstall(APP, inputs(port))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", port, open_=False)  # False: closed
    assert not conf(port).exists()
    assert (data_dir(port) / "dump.rdb").is_file()

    # Reinstalling finds the data again.
    again = await installer_run(APP, inputs(port, persistence="rdb"))
    assert again.state == "succeeded", again.text
    assert cli(port, "GET", "k") == "v"

    done = run_uninstall(APP, inputs(port), extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", port, open_=False)  # False: closed
    assert not data_dir(port).exists()
