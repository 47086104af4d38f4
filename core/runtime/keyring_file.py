"""The key ring as a long-running process sees it: re-read when the key file changes.

Keys rotate without downtime (docs/architecture.md §3): `provision keys new` appends a key the
panel starts
signing with at once, so a long-running panel or agent must pick it up without a restart, or
it would fail fresh jobs with `unknown_key`.
"""

from __future__ import annotations

import time
from pathlib import Path

import structlog

from core.errors import KeyRingError
from core.keyring import KeyRing, load_keyring

log = structlog.get_logger("keys")

CHECK_INTERVAL_S = 1.0


class KeyRingFile:
    """A key ring loaded from a file and reloaded when the file's size or mtime change."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._ring = load_keyring(path)
        self._stamp = self._read_stamp()
        self._checked_at = time.monotonic()

    def _read_stamp(self) -> tuple[int, int]:
        info = self._path.stat()
        return info.st_mtime_ns, info.st_size

    def current(self) -> KeyRing:
        """The newest readable ring; a broken rewrite keeps the last good one."""
        now = time.monotonic()
        if now - self._checked_at < CHECK_INTERVAL_S:
            return self._ring
        self._checked_at = now
        try:
            stamp = self._read_stamp()
            if stamp != self._stamp:
                self._ring = load_keyring(self._path)
                self._stamp = stamp
                log.info("keys.reloaded", kids=list(self._ring.keys))
        except (OSError, KeyRingError) as error:
            log.error("keys.reload_failed", path=str(self._path), error=str(error))
        return self._ring
