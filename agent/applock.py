"""One job per app per host: an asyncio lock within the agent, a file lock across agents.

Installers of one app fight over the same package manager lock and the same config files,
so DESIGN §6 forbids running two at once on one host. The in-process lock orders this
agent's own jobs; `flock` on a file under the lock folder extends that to every agent
process on the host (two agents of different targets, or a restarted agent whose previous
self is still draining). The kernel drops a `flock` when its holder dies, so a crashed agent
never leaves an app locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

DEFAULT_LOCK_DIR: Final = Path("/run/lock/provision")
# While another agent holds the app, the lock is tried again after a pause that starts short
# and doubles up to the cap: a fixed 0.2 s cost two agents sharing short jobs a tenth of a
# second at every collision (their throughput fell below that of one agent), while a long
# install still costs only five tries a second.
_FIRST_POLL_S: Final = 0.002
_MAX_POLL_S: Final = 0.2


def lock_dir() -> Path:
    """The host-wide lock folder: /run/lock/provision, or one in the temp folder."""
    for candidate in (DEFAULT_LOCK_DIR, Path("/tmp/provision-locks")):  # noqa: S108
        try:
            candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    raise OSError("no writable folder for the per-app locks")


class AppLocks:
    """Hands out the per-app lock of this host."""

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder or lock_dir()
        self._local: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, app_id: str) -> AsyncIterator[None]:
        """Wait until no other job of `app_id` runs on this host, then hold the app."""
        async with self._local.setdefault(app_id, asyncio.Lock()):
            # app_id matches ^[a-z0-9][a-z0-9_-]*$ (checked by the whitelist layer).
            fd = os.open(self._folder / f"{app_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                pause = _FIRST_POLL_S
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, _MAX_POLL_S)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
