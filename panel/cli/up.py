"""`provision up`: everything on one machine — Redis, the panel and an agent — until Ctrl-C.

Redis comes from the launcher (unless PROV_REDIS_URL names one), with its data, the key file
and the logs' readable form under the data folder, so a restart finds every job where it
was. Panel and agent run as child processes of this one (`python -m core panel|agent`),
their log lines prefixed with their name. A child that dies is restarted with a backoff;
Ctrl-C (or SIGTERM) stops the agent gracefully, then the panel, then Redis, and leaves
nothing running. A second Ctrl-C hurries the children along.

`PROV_ADMIN_PASSWORD` is taken out of this process's environment before anything is started,
so neither Redis, the panel nor the agent (nor anything they start) ever holds it; only
`bootstrap_admin` sees it. `/proc/<pid>/environ` of the `up` process itself still shows it
for as long as `up` runs: that file is the environment the process was started with, which
removing a variable does not rewrite (it is readable by the same user and root only). Leave
the variable unset to have a one-time password printed instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import aiohttp
import click

from core.cli.keys import resolve_keys_file
from core.errors import RedisLaunchError, SettingsError
from core.keyring import append_new_key
from core.keys import RedisKeys
from core.runtime.redis_conn import connect
from core.runtime.redis_launcher import RedisServer, start_redis
from core.runtime.settings import LOCAL_REDIS_FOLDER, PanelSettings
from panel.auth.access import Role
from panel.auth.tokens import TokenStore
from panel.auth.users import UserStore

STOP_TIMEOUT_S: Final = 45.0
RESTART_BACKOFF_S: Final = (1.0, 2.0, 5.0, 10.0)
READY_TIMEOUT_S: Final = 30.0


@dataclass
class Child:
    """One supervised child process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    restarts: list[float] = field(default_factory=list)
    pump: asyncio.Task[None] | None = None


def _say(message: str) -> None:
    click.echo(f"provision | {message}", err=True)


async def _pump_output(child: Child) -> None:
    assert child.process is not None
    assert child.process.stdout is not None
    prefix = f"{child.name:<9}| "
    while line := await child.process.stdout.readline():
        sys.stderr.write(prefix + line.decode("utf-8", "replace"))
        sys.stderr.flush()


async def _start(child: Child) -> None:
    child.process = await asyncio.create_subprocess_exec(
        *child.argv,
        env=child.env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop the
        # children in order (agent first, so it can drain).
        start_new_session=True,
    )
    child.pump = asyncio.create_task(_pump_output(child))


async def _stop(child: Child, timeout_s: float) -> None:
    process = child.process
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout_s)
    except TimeoutError:
        _say(f"{child.name} did not stop in {timeout_s:.0f} s; killing it")
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    if child.pump is not None:
        await asyncio.wait([child.pump], timeout=2)


async def _wait_ready(url: str, panel: Child) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if panel.process is not None and panel.process.returncode is not None:
                return False
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return True
            await asyncio.sleep(0.2)
    return False


async def _supervise(children: list[Child], stopping: asyncio.Event) -> None:
    """Restart a child that dies, with a backoff; give up on one that keeps dying."""
    while not stopping.is_set():
        waits = {
            asyncio.ensure_future(child.process.wait()): child
            for child in children
            if child.process is not None
        }
        stop_wait = asyncio.ensure_future(stopping.wait())
        done, _ = await asyncio.wait([*waits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        for future in [*waits, stop_wait]:
            if future not in done:
                future.cancel()
        if stopping.is_set():
            return
        for future in done:
            child = waits.get(future)
            if child is None:
                continue
            code = child.process.returncode if child.process else None
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < 60] + [now]
            if len(child.restarts) > len(RESTART_BACKOFF_S):
                _say(f"{child.name} keeps exiting (last code {code}); stopping everything")
                stopping.set()
                return
            delay = RESTART_BACKOFF_S[len(child.restarts) - 1]
            _say(f"{child.name} exited with code {code}; restarting in {delay:.0f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            if not stopping.is_set():
                await _start(child)


# Read once by `provision up` itself, never handed to a child.
SECRET_VARIABLES: Final = ("PROV_ADMIN_PASSWORD",)


def take_admin_password(environ: MutableMapping[str, str]) -> str:
    """PROV_ADMIN_PASSWORD ("" when unset), removed from `environ` (for `os.environ`, from the
    process's C environment too, so no child started afterwards inherits it)."""
    return environ.pop("PROV_ADMIN_PASSWORD", "")


def child_environment(
    base: Mapping[str, str], *, redis_url: str, keys_file: Path, data_dir: Path
) -> dict[str, str]:
    """What panel and agent inherit: ours without the secrets, plus where Redis, keys and
    data are."""
    env = {key: value for key, value in base.items() if key not in SECRET_VARIABLES}
    env.update(
        {
            "PROV_REDIS_URL": redis_url,
            "PROV_HMAC_KEYS_FILE": str(keys_file),
            "PROV_DATA_DIR": str(data_dir),
            "PROV_LOG_FORMAT": env.get(
                "PROV_LOG_FORMAT", "color" if sys.stderr.isatty() else "console"
            ),
            # A stable consumer name: a restarted agent resumes its own pending entries at once.
            "PROV_AGENT_ID": env.get("PROV_AGENT_ID", f"{os.uname().nodename}-up"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _prepare(settings: PanelSettings) -> tuple[Path, Path, str, RedisServer | None]:
    """The data folder, the key file (created if missing) and a Redis to use."""
    common = settings.common
    data_dir = common.data_dir.resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys_file, _ = resolve_keys_file(None, common)
    keys_file = keys_file.resolve()
    if not keys_file.exists():
        kid = append_new_key(keys_file)
        _say(f"created the key ring {keys_file} (key {kid}, mode 0600)")
    if common.redis_url:
        _say("using the Redis at PROV_REDIS_URL")
        return data_dir, keys_file, common.redis_url, None
    server = start_redis(data_dir / LOCAL_REDIS_FOLDER, fsync=common.redis_fsync)
    _say(f"started Redis (pid {server.pid}) with its data in {server.data_dir}")
    return data_dir, keys_file, server.url, server


ADMIN_NAME: Final = "admin"
ADMIN_TOKEN_FILE: Final = "admin.token"  # noqa: S105 - a file name, not a secret


async def bootstrap_admin(
    redis_url: str, namespace: str, data_dir: Path, admin_password: str = ""
) -> None:
    """On an empty Redis, create `admin` (printing its one-time password once, unless
    `admin_password`, PROV_ADMIN_PASSWORD's value, gives it); keep a valid admin API token in
    the data folder for the client commands (mode 0600)."""
    client = await connect(redis_url)
    try:
        keys = RedisKeys(namespace)
        users = UserStore(client, keys)
        tokens = TokenStore(client, keys)
        if await users.count() == 0:
            given = admin_password
            password = given or secrets.token_urlsafe(18)
            await users.add(ADMIN_NAME, Role.ADMIN, password)
            if given:
                _say("created user 'admin' with the password from PROV_ADMIN_PASSWORD")
            else:
                # Shown once, never stored in clear: the user should keep it or change it
                # with `provision users passwd admin`.
                _say(f"created user 'admin' with the one-time password:  {password}")
                _say("log in with it now; it is not shown again")
        token_file = data_dir / ADMIN_TOKEN_FILE
        token = token_file.read_text().strip() if token_file.exists() else ""
        now_ms = int(time.time() * 1000)
        if not token or await tokens.authenticate(token, now_ms=now_ms) is None:
            if await users.get(ADMIN_NAME) is None:
                return  # admin was removed on purpose: no token for the CLI then
            token, _info = await tokens.create(ADMIN_NAME, name="provision up (CLI)")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            os.chmod(token_file, 0o600)
    finally:
        await client.aclose()


class _Signals:
    """The first Ctrl-C stops everything in order; a second one hurries the children."""

    def __init__(self, stopping: asyncio.Event, children: list[Child]) -> None:
        self.count = 0
        self._stopping = stopping
        self._children = children

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            _say("stopping (Ctrl-C again to hurry)")
        self._stopping.set()
        if self.count > 1:
            for child in self._children:
                if child.process is not None and child.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.process.send_signal(signal.SIGTERM)


async def run_up(
    settings: PanelSettings, environ: Mapping[str, str], *, admin_password: str = ""
) -> int:
    """Start everything, wait for Ctrl-C, stop everything; the exit code.

    `admin_password` is PROV_ADMIN_PASSWORD, already taken out of `environ`
    (`take_admin_password`); the children's environment lacks it in any case."""
    data_dir, keys_file, redis_url, server = _prepare(settings)
    try:
        await bootstrap_admin(redis_url, settings.common.namespace, data_dir, admin_password)
    except BaseException:
        if server is not None:
            server.stop()
        raise
    env = child_environment(environ, redis_url=redis_url, keys_file=keys_file, data_dir=data_dir)
    command = [sys.executable, "-m", "core"]
    agent = Child("agent", [*command, "agent"], env)
    panel = Child("panel", [*command, "panel"], env)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    on_signal = _Signals(stopping, [agent, panel])
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal)
    exit_code = 0
    try:
        await _start(agent)
        await _start(panel)
        url = f"http://{settings.host}:{settings.port}"
        if await _wait_ready(url, panel):
            _say(f"panel ready at {url}  (installers: {settings.common.installers_dir})")
        else:
            _say("the panel did not come up; see its log above")
            exit_code = 1
            stopping.set()
        await _supervise([agent, panel], stopping)
        if on_signal.count == 0:
            exit_code = 1  # stopped because a child kept dying
    finally:
        await _stop(agent, STOP_TIMEOUT_S)
        await _stop(panel, 10.0)
        if server is not None:
            server.stop()
            _say("stopped Redis")
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    _say("stopped")
    return exit_code


@click.command("up")
def up_command() -> None:
    """Run everything on this machine: Redis, the panel and an agent, until Ctrl-C."""
    try:
        settings = PanelSettings.from_env(os.environ)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    # Before Redis, the panel or the agent starts: none of them inherits it (module docstring).
    admin_password = take_admin_password(os.environ)
    try:
        code = asyncio.run(run_up(settings, os.environ, admin_password=admin_password))
    except RedisLaunchError as error:
        raise click.ClickException(str(error)) from None
    sys.exit(code)
