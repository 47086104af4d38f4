"""`provision up` with PROV_ADMIN_PASSWORD: the password reaches no child's environment.

A real `provision up` starts Redis, the panel and the agent; the test reads
`/proc/<pid>/environ` of every process descended from it. Only `up` itself still shows the
password there: that file is the environment a process was started with (panel/cli/up.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.agent_support import wait_until, write_app
from tests.auth_support import fetch_login_form
from tests.e2e.test_up import Up, _ready, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

PASSWORD = "Sc1dsh-only-for-up-8f2a"


def _parent_of(pid: str) -> str | None:
    try:
        stat = (Path("/proc") / pid / "stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[1]


def _descendants(root: int) -> dict[str, tuple[str, bytes]]:
    """pid -> (command line, initial environment) of every live process under `root`."""
    parents = {proc.name: _parent_of(proc.name) for proc in Path("/proc").iterdir()}
    found: dict[str, tuple[str, bytes]] = {}
    wanted = {str(root)}
    while wanted:
        children = {pid for pid, parent in parents.items() if parent in wanted} - found.keys()
        wanted = set()
        for pid in children:
            try:
                cmdline = (Path("/proc") / pid / "cmdline").read_bytes().replace(b"\0", b" ")
                environ = (Path("/proc") / pid / "environ").read_bytes()
            except OSError:
                continue
            found[pid] = (cmdline.decode(errors="replace"), environ)
            wanted.add(pid)
    return found


@pytest.fixture
def installers(tmp_path: Path) -> Path:
    folder = tmp_path / "installers"
    write_app(folder, "hello", 'echo "hello"')
    return folder


@pytest.fixture
async def up(tmp_path, installers):
    running = Up(tmp_path, installers, free_port())
    running.env["PROV_ADMIN_PASSWORD"] = PASSWORD
    running.start()
    await wait_until(lambda: _ready(running), timeout_s=60, message="provision up is ready")
    yield running
    code = await asyncio.to_thread(running.stop)
    assert code == 0, running.output()


async def test_the_admin_password_is_in_no_child_environment(up):
    assert up.process is not None
    children = _descendants(up.process.pid)
    commands = [cmdline for cmdline, _ in children.values()]
    assert any("-m core panel" in c for c in commands), commands
    assert any("-m core agent" in c for c in commands), commands
    for pid, (cmdline, environ) in children.items():
        assert b"PROV_ADMIN_PASSWORD" not in environ, (pid, cmdline)
        assert PASSWORD.encode() not in environ, (pid, cmdline)
    # The reading is real: `up`'s own initial environment still holds it (module docstring).
    own = (Path("/proc") / str(up.process.pid) / "environ").read_bytes()
    assert PASSWORD.encode() in own
    # And the password did its job: admin logs in with it.
    async with aiohttp.ClientSession() as session:
        form = await fetch_login_form(session, f"{up.url}/login")
        async with session.post(
            f"{up.url}/login",
            data=form.fields("admin", PASSWORD, "/jobs"),
            headers=form.headers(),
            allow_redirects=False,
        ) as login:
            assert login.status == 303
    assert "password from PROV_ADMIN_PASSWORD" in up.output()
