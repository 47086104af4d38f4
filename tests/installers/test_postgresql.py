"""installers/postgresql through the real agent: a dedicated cluster, a database, its owner.

Runs real services on this machine (marked `installers` and `slow` by conftest.py). The app
manages one cluster named "provision"; each test drops it in teardown (REMOVE_DATA=true), so
the machine is left as found. Debian's "main" cluster is never touched.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installers.harness import InstallerRun, RunUninstall, port_open, run_uninstall, wait_port

pytestmark = [pytest.mark.installers, pytest.mark.slow]

APP = "postgresql"
# Not a real secret: a throw-away password for a test cluster on 127.0.0.1 (with a quote,
# which the script must escape in SQL).
PASSWORD = "Tst'pw-" + "h3Lk8sQ1zX"
DATABASE = "shop_test"
OWNER = "shop_owner"


def clusters() -> list[str]:
    """`version/name` of every cluster named provision."""
    if subprocess.run(["which", "pg_lsclusters"], capture_output=True, check=False).returncode:
        return []
    listing = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=True)
    return [
        f"{parts[0]}/{parts[1]}"
        for parts in (line.split() for line in listing.stdout.splitlines())
        if len(parts) > 1 and parts[1] == "provision"
    ]


def inputs(port: int, **changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "port": port,
        "listen_address": "localhost",
        "database": DATABASE,
        "owner": OWNER,
        "owner_password": PASSWORD,
        "max_connections": 40,
    }
    base.update(changes)
    return base


def query(port: int, sql: str) -> str:
    """Run `sql` as the owner over TCP; the password travels in PGPASSWORD, never argv."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGPASSWORD": PASSWORD}
    target = ["-h", "127.0.0.1", "-p", str(port), "-U", OWNER, "-d", DATABASE]
    done = subprocess.run(
        ["psql", "-X", "-w", *target, "-At", "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    return done.stdout.strip()


def server_pid(version: str = "15") -> int:
    pid_file = Path(f"/var/lib/postgresql/{version}/provision/postmaster.pid")
    return int(pid_file.read_text().splitlines()[0])


def on_a_command_line(secret: str) -> bool:
    """True when any process's argv (what ps shows) contains `secret`."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if secret.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def free_port(start: int) -> int:
    port = start
    while port_open("127.0.0.1", port):
        port += 1
    return port


@pytest.fixture
def port() -> Iterator[int]:
    """A free port; the provision cluster is dropped in teardown (data included)."""
    if clusters():
        pytest.fail(f"a provision cluster exists already ({clusters()}): not touching it")
    chosen = free_port(15433 + os.getpid() % 500)
    yield chosen
    done = run_uninstall(APP, inputs(chosen), extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not clusters()
    assert not port_open("127.0.0.1", chosen)


async def test_install_is_idempotent_and_reconfigures(
    installer_run: InstallerRun, port: int
) -> None:
    first = await installer_run(APP, inputs(port))
    assert first.state == "succeeded", first.text
    assert query(port, "SELECT current_user || ' ' || current_database()") == f"{OWNER} {DATABASE}"
    assert query(port, "SHOW max_connections") == "40"
    assert query(port, "SHOW port") == str(port)
    # The secret is used by the script (SQL, PGPASSWORD) but never reaches the job log.
    assert PASSWORD not in first.text
    assert not on_a_command_line(PASSWORD)
    pid = server_pid()

    again = await installer_run(APP, inputs(port))
    assert again.state == "succeeded", again.text
    assert again.has_line("unchanged /etc/postgresql/15/provision/conf.d/provision.conf"), (
        again.text
    )
    assert again.has_line("unchanged /etc/postgresql/15/provision/pg_hba.conf"), again.text
    assert not again.has_line("updated "), again.text
    assert server_pid() == pid
    assert PASSWORD not in again.text

    changed = await installer_run(APP, inputs(port, max_connections=60))
    assert changed.state == "succeeded", changed.text
    assert changed.has_line("updated /etc/postgresql/15/provision/conf.d/provision.conf")
    assert query(port, "SHOW max_connections") == "60"


async def test_a_rejected_config_fails_with_exit_3_and_keeps_the_old_one(
    installer_run: InstallerRun, port: int
) -> None:
    first = await installer_run(APP, inputs(port))
    assert first.state == "succeeded", first.text
    query(port, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
    # Another program holds the new port: PostgreSQL cannot listen there and refuses to start.
    taken = free_port(port + 1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", taken))
        holder.listen()
        broken = await installer_run(APP, inputs(taken, max_connections=80))
    assert (broken.state, broken.reason, broken.exit_code) == ("failed", "config_error", "3"), (
        broken.text
    )
    assert broken.has_line("restored /etc/postgresql/15/provision/conf.d/provision.conf")
    assert PASSWORD not in broken.text
    assert await wait_port("127.0.0.1", port)
    assert query(port, "SHOW max_connections") == "40"
    assert query(port, "SELECT id FROM kept") == "7"


async def test_uninstall_keeps_data_unless_asked(
    installer_run: InstallerRun, run_uninstall: RunUninstall, port: int
) -> None:
    first = await installer_run(APP, inputs(port))
    assert first.state == "succeeded", first.text
    query(port, "CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")

    done = run_uninstall(APP, inputs(port))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", port, open_=False)  # False: closed
    assert clusters() == ["15/provision"]

    # Reinstalling starts the kept cluster again, data included.
    again = await installer_run(APP, inputs(port))
    assert again.state == "succeeded", again.text
    assert query(port, "SELECT id FROM kept") == "7"

    done = run_uninstall(APP, inputs(port), extra_env={"REMOVE_DATA": "true"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert not await wait_port("127.0.0.1", port, open_=False)
    assert not clusters()
