"""installers/memcached through the real agent: Debian's memcached package.

Runs real services on this machine (marked `installers` and `slow`). One test walks the
whole life cycle, because each install costs an apt run: install with non-default inputs,
an idempotent second run, a reconfiguration, a config that fails (its port is taken) while
the previous one keeps serving, and the uninstall. Teardown uninstalls with
REMOVE_DATA=true, so the machine is left as found.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import InstallerRun, port_open, run_uninstall, wait_port

pytestmark = [pytest.mark.installers, pytest.mark.slow]

APP = "memcached"
CONFIG_FILE = Path("/etc/memcached.conf")
PID_FILE = Path("/var/run/memcached.pid")
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def inputs(port: int, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "listen_address": "127.0.0.1",
        "port": port,
        "memory_mb": 96,
        "max_connections": 512,
        "enable_udp": False,
    }
    base.update(changes)
    return base


def stats(port: int) -> dict[str, str]:
    """memcached's `stats`, as a dict."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"stats\r\n")
        data = b""
        while not data.endswith(b"END\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    values = {}
    for line in data.decode().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            values[parts[1]] = parts[2]
    return values


def daemon_pid() -> str:
    return PID_FILE.read_text().strip()


def read(path: Path) -> str:
    return path.read_text()


def exists(path: Path | str) -> bool:
    return Path(path).exists()


@pytest.fixture
def cleanup(installers_machine: None) -> Iterator[None]:
    yield
    done = run_uninstall(APP, extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr


async def test_memcached_life_cycle(installer_run: InstallerRun, cleanup: None) -> None:
    first_port, second_port, taken_port = free_port(), free_port(), free_port()
    assert len({first_port, second_port, taken_port}) == 3

    # 1. A fresh install with non-default inputs.
    first = await installer_run(APP, inputs(first_port))
    assert first.state == "succeeded", first.text
    values = stats(first_port)
    assert values["limit_maxbytes"] == str(96 * MIB)
    assert values["max_connections"] == "512"
    pid = daemon_pid()

    # 2. The same inputs again: nothing changes, memcached is not restarted (its cache stays).
    again = await installer_run(APP, inputs(first_port))
    assert again.state == "succeeded", again.text
    assert again.has_line(f"unchanged {CONFIG_FILE}"), again.text
    assert not again.has_line("updated "), again.text
    assert daemon_pid() == pid

    # 3. Changed inputs reconfigure it: another port and more memory.
    changed = await installer_run(APP, inputs(second_port, memory_mb=128, max_connections=2048))
    assert changed.state == "succeeded", changed.text
    assert changed.has_line(f"updated {CONFIG_FILE}"), changed.text
    assert not await wait_port("127.0.0.1", first_port, open_=False)
    values = stats(second_port)
    assert values["limit_maxbytes"] == str(128 * MIB)
    assert values["max_connections"] == "2048"
    good_config = read(CONFIG_FILE)

    # 4. A config that cannot work (another program holds the port): exit 3, the previous
    # config stays in place and keeps serving.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken_port))
        squatter.listen()
        broken = await installer_run(APP, inputs(taken_port, memory_mb=256))
    assert (broken.state, broken.reason, broken.exit_code) == ("failed", "config_error", "3"), (
        broken.text
    )
    assert read(CONFIG_FILE) == good_config
    assert not exists(f"{CONFIG_FILE}.prov-bak")
    assert stats(second_port)["limit_maxbytes"] == str(128 * MIB)

    # 5. The uninstall stops it and removes the package it installed.
    done = run_uninstall(APP, inputs(second_port), extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", second_port, open_=False)
    assert not port_open("127.0.0.1", second_port)
    assert not exists("/usr/bin/memcached")
