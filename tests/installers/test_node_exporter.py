"""installers/node-exporter through the real agent: Debian's prometheus-node-exporter.

Runs real services on this machine (marked `installers` and `slow`). One test walks the
whole life cycle, because each install costs an apt run: install with non-default inputs,
an idempotent second run, a reconfiguration, a config that fails (its port is taken) while
the previous one keeps serving, and the uninstall. Teardown uninstalls with
REMOVE_DATA=true, so the machine is left as found.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import InstallerRun, port_open, run_uninstall, wait_port

pytestmark = [pytest.mark.installers, pytest.mark.slow]

APP = "node-exporter"
DEFAULTS_FILE = Path("/etc/default/prometheus-node-exporter")
PID_FILE = Path("/run/prometheus/prometheus-node-exporter.pid")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def inputs(port: int, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "listen_address": "127.0.0.1",
        "port": port,
        "disabled_collectors": ["wifi", "hwmon"],
        "enable_textfile": True,
    }
    base.update(changes)
    return base


def metrics(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


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


async def test_node_exporter_life_cycle(installer_run: InstallerRun, cleanup: None) -> None:
    first_port, second_port, taken_port = free_port(), free_port(), free_port()
    assert len({first_port, second_port, taken_port}) == 3

    # 1. A fresh install with non-default inputs.
    first = await installer_run(APP, inputs(first_port))
    assert first.state == "succeeded", first.text
    text = metrics(first_port)
    assert "node_exporter_build_info" in text
    assert 'collector="hwmon"' not in text  # disabled
    assert 'collector="textfile"' in text  # enabled, with its directory
    assert exists("/var/lib/prometheus/node-exporter")
    pid = daemon_pid()

    # 2. The same inputs again: nothing changes, the daemon is not restarted.
    again = await installer_run(APP, inputs(first_port))
    assert again.state == "succeeded", again.text
    assert again.has_line(f"unchanged {DEFAULTS_FILE}"), again.text
    assert not again.has_line("updated "), again.text
    assert not again.has_line("restarting"), again.text
    assert daemon_pid() == pid

    # 3. Changed inputs reconfigure it (a restart: its flags cannot be reloaded).
    changed = await installer_run(
        APP, inputs(second_port, disabled_collectors=[], enable_textfile=False)
    )
    assert changed.state == "succeeded", changed.text
    assert changed.has_line(f"updated {DEFAULTS_FILE}"), changed.text
    assert not await wait_port("127.0.0.1", first_port, open_=False)
    text = metrics(second_port)
    assert 'collector="hwmon"' in text
    assert 'collector="textfile"' not in text
    assert daemon_pid() != pid
    good_config = read(DEFAULTS_FILE)

    # 4. A config that cannot work (another program holds the port): exit 3, the previous
    # config stays in place and keeps serving.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken_port))
        squatter.listen()
        broken = await installer_run(APP, inputs(taken_port))
    assert (broken.state, broken.reason, broken.exit_code) == ("failed", "config_error", "3"), (
        broken.text
    )
    assert broken.has_line(f"port {taken_port} is already used"), broken.text
    assert read(DEFAULTS_FILE) == good_config
    assert not exists(f"{DEFAULTS_FILE}.prov-bak")
    assert "node_exporter_build_info" in metrics(second_port)

    # 5. The uninstall stops it and removes the package it installed.
    done = run_uninstall(APP, inputs(second_port), extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", second_port, open_=False)
    assert not port_open("127.0.0.1", second_port)
    assert not exists("/usr/bin/prometheus-node-exporter")
