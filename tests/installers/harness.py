"""Run real installers the way production does, for `tests/installers/test_*.py`.

Everything in tests/installers except test_lib.py is marked `installers` and `slow` by
conftest.py: these tests install real Debian packages and start real services on this
machine (root, Debian, apt), as CI does. Run them with::

    .venv/bin/pytest -m installers tests/installers
    .venv/bin/pytest tests/installers/test_redis.py -x -vv   # one app

Fixtures (from tests/installers/conftest.py, nothing to import):

- ``installer_run``: an async function ``run(app_id, inputs) -> Result``. It submits a job
  for the repo's real ``installers/<app_id>`` (``core.runtime.settings.BUNDLED_INSTALLERS_DIR``)
  through the real path: inputs validated and normalised by the manifest, the job signed
  with a fresh key ring, queued on this test's own Redis namespace (the session Redis from
  tests/conftest.py), run by an in-process ``agent.worker.Agent`` (one agent id per test;
  started for each call and stopped once the job is terminal), and waited for until
  ``succeeded`` or ``failed``
  (``timeout_s=300`` by default, a keyword argument). Inputs you leave out take their
  manifest defaults. A manifest that does not validate the inputs raises ``FormError``.
- ``run_uninstall`` (fixture, or import the function of the same name from this module):
  ``run_uninstall(app_id, inputs=None, *, extra_env=None)`` runs the app's
  uninstall script with ``bash`` directly (not through the agent: the panel has no uninstall
  job yet), in the app folder, with the environment the agent would build for those inputs
  (``agent.checks.sandbox_environment`` on validated values) plus ``extra_env``. It returns a
  ``subprocess.CompletedProcess[str]`` (stdout, stderr, returncode) and does not raise on a
  non-zero exit. Also importable as a plain function from this module, for teardown code.

``Result`` carries ``snapshot`` (the job's snapshot: ``state``, ``reason``, ``exit_code``,
``attempt``...), ``log_lines`` (``[(stream, line)]`` in order, every attempt, the verify
probe's output included), ``events`` (the job's ``statemachine.events.Event`` list), and
helpers: ``state``, ``reason``, ``exit_code``, ``stdout``, ``stderr``, ``text`` (all lines),
``has_line(substring)`` and ``triggers``.

Example (tests/installers/test_myapp.py)::

    import pytest
    from tests.installers.harness import port_open, run_uninstall

    INPUTS = {"port": 16379, "password": "correct horse battery"}

    @pytest.fixture
    def cleanup():
        yield
        run_uninstall("myapp", INPUTS)          # leave the machine as found

    async def test_installs_and_is_idempotent(installer_run, cleanup):
        first = await installer_run("myapp", INPUTS)
        assert first.state == "succeeded", first.text
        assert port_open("127.0.0.1", 16379)
        again = await installer_run("myapp", INPUTS)
        assert again.state == "succeeded", again.text
        assert again.has_line("unchanged /etc/myapp/myapp.conf")
        assert not again.has_line("updated ")

    async def test_a_bad_config_fails_with_exit_3(installer_run, cleanup):
        result = await installer_run("myapp", {**INPUTS, "maxmemory_mb": 999999})
        assert (result.state, result.reason, result.exit_code) == ("failed", "config_error", "3")

A failing assertion should print ``result.text``: it is the installer's whole log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import redis.asyncio as aioredis

from agent.checks import sandbox_environment
from agent.worker import Agent
from core.keyring import KeyRing
from core.keys import RedisKeys
from core.runtime.catalogue import AppEntry, Catalogue
from core.runtime.settings import BUNDLED_INSTALLERS_DIR, AgentSettings
from core.validation import validate_inputs
from statemachine.events import Event
from statemachine.store import EventStore
from tests.agent_support import agent_environ, make_ring, submit, wait_for_state

TERMINAL = {"succeeded", "failed"}
DEFAULT_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 5.0


def installers_dir() -> Path:
    """The repo's real installers folder (what the agent runs in production)."""
    return BUNDLED_INSTALLERS_DIR


def machine_problem() -> str | None:
    """Why real installers cannot run here (not root, no apt, no bash), or None."""
    if os.geteuid() != 0:
        return "installer tests need root"
    for tool in ("apt-get", "dpkg-query", "bash", "start-stop-daemon"):
        if shutil.which(tool) is None:
            return f"installer tests need {tool} (a Debian machine)"
    return None


@dataclass(frozen=True)
class Result:
    """The outcome of one job run through the agent."""

    job_id: str
    snapshot: dict[str, str]
    log_lines: list[tuple[str, str]]
    events: list[Event] = field(default_factory=list)

    @property
    def state(self) -> str:
        return self.snapshot.get("state", "")

    @property
    def reason(self) -> str:
        return self.snapshot.get("reason", "")

    @property
    def exit_code(self) -> str:
        return self.snapshot.get("exit_code", "")

    @property
    def stdout(self) -> list[str]:
        return [line for stream, line in self.log_lines if stream == "stdout"]

    @property
    def stderr(self) -> list[str]:
        return [line for stream, line in self.log_lines if stream == "stderr"]

    @property
    def text(self) -> str:
        """Every line as `stream: line`, plus the snapshot: for assertion messages."""
        lines = [f"{stream}: {line}" for stream, line in self.log_lines]
        return "\n".join([f"snapshot: {self.snapshot}", *lines])

    @property
    def triggers(self) -> list[str]:
        return [event.trigger for event in self.events]

    def has_line(self, substring: str) -> bool:
        """True when any log line (either stream) contains `substring`."""
        return any(substring in line for _, line in self.log_lines)


class InstallerRun(Protocol):
    """The type of the `installer_run` fixture."""

    def __call__(
        self,
        app_id: str,
        inputs: Mapping[str, object] | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Awaitable[Result]: ...


def load_app(app_id: str, installers: Path | None = None) -> AppEntry:
    """The app's catalogue entry; fails the test when it is missing or invalid."""
    app = Catalogue.load(installers or installers_dir()).get(app_id)
    assert app is not None, f"no app {app_id!r} in {installers or installers_dir()}"
    assert app.valid and app.manifest is not None, f"{app_id} is invalid: {app.problems}"
    return app


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class InstallerHarness:
    """One in-process agent on its own namespace, and the store to submit to it."""

    def __init__(
        self, *, redis_url: str, namespace: str, workdir: Path, installers: Path | None = None
    ) -> None:
        self.redis_url = redis_url
        self.namespace = namespace
        self.installers = installers or installers_dir()
        self.keys = RedisKeys(namespace)
        self._keys_file = workdir / "hmac.keys"
        self.ring: KeyRing = make_ring(self._keys_file)
        self._client: aioredis.Redis | None = None
        self._agent: Agent | None = None
        self._task: asyncio.Task[None] | None = None
        self.store: EventStore | None = None

    async def _start_agent(self) -> EventStore:
        if self._client is None:
            self._client = aioredis.from_url(self.redis_url, socket_timeout=30)
            self.store = EventStore(self._client, self.keys, self.ring)
        assert self.store is not None
        env = agent_environ(
            redis_url=self.redis_url,
            namespace=self.namespace,
            keys_file=self._keys_file,
            installers=self.installers,
            agent_id=f"installer-test-{self.namespace}",
            # Long installs (apt) must keep their claim: renewals run well inside the lease.
            PROV_LEASE_S="30",
        )
        settings = AgentSettings.from_env(env)
        ring = self.ring
        self._agent = Agent(settings, self._client, lambda: ring)
        self._task = asyncio.create_task(self._agent.run())
        return self.store

    async def _stop_agent(self, *, immediate: bool) -> None:
        task, agent = self._task, self._agent
        self._task = self._agent = None
        if agent is None or task is None:
            return
        if task.done():
            task.result()  # the agent crashed: surface its exception
            return
        agent.stop(immediate=immediate)
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=STOP_TIMEOUT_S)
        except TimeoutError:
            # Known agent issue: when the event loop was blocked for a few seconds (a sync
            # fixture running an uninstall, say) every periodic duty is mid-command when
            # stop() cancels them; one may swallow the cancellation and keep sleeping, so
            # Agent.run() never returns. Cancelling the run task cancels the helpers' gather
            # again, which ends them; only the agent's goodbye is skipped.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=STOP_TIMEOUT_S)

    async def run(
        self,
        app_id: str,
        inputs: Mapping[str, object] | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> Result:
        """Submit `app_id` with `inputs`, wait for a terminal state, collect log and events.

        The agent runs only while a job does: it is started for each call and stopped once
        the job is terminal (an idle agent must not sit under a blocked event loop, see
        _stop_agent).
        """
        store = await self._start_agent()
        assert self._client is not None
        try:
            job = await submit(store, self.ring, self.installers, app_id, dict(inputs or {}))
            snapshot = await wait_for_state(store, job.job_id, TERMINAL, timeout_s=timeout_s)
        except BaseException:
            await self._stop_agent(immediate=True)  # kills a run still going (a timeout)
            raise
        await self._stop_agent(immediate=False)  # the job is terminal: nothing to kill
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]],
            await self._client.xrange(self.keys.job_log(job.job_id)),
        )
        log_lines = [
            (_text(fields[b"stream"]), _text(fields[b"line"]))
            for _, fields in entries
            if b"stream" in fields and b"line" in fields
        ]
        events = await store.job_events(job.job_id)
        return Result(job.job_id, snapshot, log_lines, events)

    async def close(self) -> None:
        """Stop the agent if a run was interrupted, and close the client."""
        await self._stop_agent(immediate=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def uninstall_environment(
    app_id: str,
    inputs: Mapping[str, object] | None = None,
    *,
    extra_env: Mapping[str, str] | None = None,
    installers: Path | None = None,
) -> dict[str, str]:
    """The environment the agent would give the app's scripts for `inputs` (+ extra_env)."""
    app = load_app(app_id, installers)
    assert app.manifest is not None
    values = validate_inputs(app.manifest, dict(inputs or {}))
    env = sandbox_environment(
        app.manifest,
        values,
        job_id=f"uninstall-{app_id}-{int(time.time())}",
        attempt=1,
        home=os.environ.get("HOME", "/root"),
    )
    env.update(extra_env or {})
    return env


def run_uninstall(
    app_id: str,
    inputs: Mapping[str, object] | None = None,
    *,
    extra_env: Mapping[str, str] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    installers: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `installers/<app_id>/<uninstall>` with bash, as the agent would run a script."""
    app = load_app(app_id, installers)
    assert app.manifest is not None
    script = app.manifest.uninstall
    assert script, f"{app_id} declares no uninstall script"
    env = uninstall_environment(app_id, inputs, extra_env=extra_env, installers=installers)
    folder = app.folder.resolve()
    return subprocess.run(
        ["bash", str(folder / script)],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        start_new_session=True,
    )


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a TCP connect to host:port succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


async def wait_port(host: str, port: int, *, open_: bool = True, timeout_s: float = 10) -> bool:
    """Wait until host:port is open (or closed, with open_=False), up to timeout_s.

    Returns whether the port is OPEN at the end (the final state, not "reached the goal"):
    ``assert await wait_port(h, p)`` for open, ``assert not await wait_port(h, p,
    open_=False)`` for closed.
    """
    deadline = time.monotonic() + timeout_s
    while port_open(host, port) != open_:
        if time.monotonic() > deadline:
            return not open_
        await asyncio.sleep(0.2)
    return open_


RunUninstall = Callable[..., subprocess.CompletedProcess[str]]
__all__ = [
    "DEFAULT_TIMEOUT_S",
    "InstallerHarness",
    "InstallerRun",
    "Result",
    "RunUninstall",
    "installers_dir",
    "load_app",
    "machine_problem",
    "port_open",
    "run_uninstall",
    "uninstall_environment",
    "wait_port",
]
