"""Helpers for agent tests: throw-away apps, key files, submitting jobs, waiting for states."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from core.keyring import KeyRing, append_new_key, load_keyring
from core.keys import RedisKeys
from core.runtime.catalogue import Catalogue
from core.validation import validate_inputs
from panel.jobs.producer import SubmittedJob, submit_job
from statemachine.store import EventStore, IndexJob


def write_app(
    installers: Path,
    app_id: str,
    script: str,
    *,
    inputs: list[dict[str, Any]] | None = None,
    **manifest: Any,
) -> Path:
    """Create `installers/<app_id>/` with a manifest and an install.sh running `script`."""
    folder = installers / app_id
    folder.mkdir(parents=True, exist_ok=True)
    document = {
        "id": app_id,
        "name": app_id.title(),
        "version": "1.0.0",
        "description": f"test app {app_id}",
        "category": "test",
        "inputs": inputs or [],
        **manifest,
    }
    (folder / "manifest.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    install = folder / "install.sh"
    install.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + script + "\n")
    install.chmod(0o755)
    return folder


def make_ring(path: Path) -> KeyRing:
    """A fresh key file with one key, and its ring."""
    append_new_key(path)
    return load_keyring(path)


async def submit(
    store: EventStore,
    ring: KeyRing,
    installers: Path,
    app_id: str,
    values: Mapping[str, object] | None = None,
    *,
    target: str = "local",
    ttl_s: int = 3600,
    now_s: int | None = None,
) -> SubmittedJob:
    """Validate `values` against the app and submit it the way the panel does."""
    app = Catalogue.load(installers).get(app_id)
    assert app is not None and app.valid and app.manifest is not None, app
    normalised = validate_inputs(app.manifest, dict(values or {}))
    return await submit_job(
        store,
        ring,
        app,
        normalised,
        requested_by="tester",
        target=target,
        ttl_s=ttl_s,
        now_s=now_s,
    )


async def create_queued_job(store: EventStore, job_id: str) -> dict[str, str]:
    """A job written straight into the store as the panel's submit leaves it (no stream
    entry, no app on disk): for tests of the store's own steps. Returns its snapshot."""
    applied = await store.create_job(
        job_id,
        actor="panel:alice",
        detail={"app_id": "hello-web", "target": "local", "requested_by": "alice"},
        effects=[IndexJob(store.keys.jobs_index, 1000, job_id)],
    )
    return applied.snapshot


async def wait_until(
    condition: Callable[[], Any],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.05,
    message: str = "condition",
) -> Any:
    """Poll an (async or plain) condition until it is truthy; fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        await asyncio.sleep(interval_s)


async def wait_for_state(
    store: EventStore, job_id: str, states: set[str] | str, *, timeout_s: float = 30.0
) -> dict[str, str]:
    """Wait until the job's snapshot is in one of `states`; return the snapshot."""
    wanted = {states} if isinstance(states, str) else states

    async def reached() -> dict[str, str] | None:
        snapshot = await store.snapshot(job_id)
        return snapshot if snapshot is not None and snapshot.get("state") in wanted else None

    return await wait_until(reached, timeout_s=timeout_s, message=f"job {job_id} in {wanted}")


def agent_environ(
    *,
    redis_url: str,
    namespace: str,
    keys_file: Path,
    installers: Path,
    agent_id: str,
    **extra: str,
) -> dict[str, str]:
    """The environment of a real `provision agent` process for a test."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PROV_REDIS_URL": redis_url,
        "PROV_NAMESPACE": namespace,
        "PROV_HMAC_KEYS_FILE": str(keys_file),
        "PROV_INSTALLERS_DIR": str(installers),
        "PROV_AGENT_ID": agent_id,
        "PROV_LEASE_S": "3",
        "PROV_KILL_GRACE_S": "1",
        "PROV_SHUTDOWN_GRACE_S": "5",
    }
    env.update(extra)
    return env


def provision_argv(*args: str) -> list[str]:
    """argv that runs the installed `provision` command with this interpreter."""
    return [sys.executable, "-c", "from core.cli.root import main; main()", *args]


def keys_of(namespace: str) -> RedisKeys:
    """Key names for a test namespace."""
    return RedisKeys(namespace)


class AgentProcess:
    """One `provision agent` process with its output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(
            provision_argv("agent"),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout=timeout_s)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
