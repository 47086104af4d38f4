"""Real `provision panel` / `provision agent` processes for the Redis fault scenarios (8, 9).

Each process writes JSON log lines (PROV_LOG_FORMAT=json) to its own file, so a test can read
what the process said, as an operator's log collector would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.agent_support import provision_argv, wait_until


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class ProvisionProcess:
    """One real `provision <command>` process with its environment and JSON log file."""

    command: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start the process, its stdout and stderr going to the log file."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                provision_argv(self.command),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time; its exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        return self.process.returncode

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far (other output, such as a traceback, is skipped)."""
        lines: list[dict[str, Any]] = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            try:
                parsed = json.loads(raw)
            except ValueError:
                continue
            if isinstance(parsed, dict):
                lines.append(parsed)
        return lines

    def output(self) -> str:
        """The whole log, for assertion messages."""
        return self.log_path.read_text(errors="replace")


def base_environ(
    *, redis_url: str, namespace: str, keys_file: Path, installers: Path, home: Path
) -> dict[str, str]:
    """What panel and agent processes of one scenario share."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "PROV_REDIS_URL": redis_url,
        "PROV_NAMESPACE": namespace,
        "PROV_HMAC_KEYS_FILE": str(keys_file),
        "PROV_INSTALLERS_DIR": str(installers),
        "PROV_LOG_FORMAT": "json",
    }


def panel_process(base: dict[str, str], log_path: Path, port: int) -> ProvisionProcess:
    """A `provision panel` on 127.0.0.1:`port`, with no submission rate limit in the way."""
    env = {
        **base,
        "PROV_PANEL_HOST": "127.0.0.1",
        "PROV_PANEL_PORT": str(port),
        "PROV_SUBMISSIONS_PER_MINUTE": "100000",
        "PROV_MAX_UNFINISHED_PER_USER": "100000",
    }
    return ProvisionProcess("panel", env, log_path)


def agent_process(base: dict[str, str], log_path: Path, agent_id: str) -> ProvisionProcess:
    """A `provision agent` with short leases and grace periods, as the agent tests use."""
    env = {
        **base,
        "PROV_AGENT_ID": agent_id,
        "PROV_LEASE_S": "3",
        "PROV_KILL_GRACE_S": "1",
        "PROV_SHUTDOWN_GRACE_S": "5",
    }
    return ProvisionProcess("agent", env, log_path)


async def wait_for_panel(session: aiohttp.ClientSession, url: str, panel: ProvisionProcess) -> None:
    """Wait until the panel answers /healthz; fail at once if the process died."""

    async def ready() -> bool:
        assert panel.process is not None and panel.process.poll() is None, panel.output()
        try:
            async with session.get(f"{url}/healthz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    await wait_until(ready, timeout_s=30, message="the panel to answer /healthz")
