"""The catalogue as the panel serves it: loaded once, re-loaded when an app's files change.

Loading reads every manifest and script; doing that on each request would be wasteful, and
caching forever would make an edited manifest invisible until a restart. A cheap `stat` of
the installers folder's files, at most once a second, tells whether anything changed.
"""

from __future__ import annotations

import time
from pathlib import Path

from core.runtime.catalogue import Catalogue

CHECK_INTERVAL_S = 1.0


def _stamp(installers_dir: Path) -> tuple[tuple[str, int, int], ...]:
    entries: list[tuple[str, int, int]] = []
    try:
        folders = sorted(installers_dir.iterdir())
    except OSError:
        return ()
    for folder in folders:
        try:
            children = sorted(folder.iterdir()) if folder.is_dir() else [folder]
        except OSError:
            continue
        for path in children:
            try:
                info = path.lstat()
            except OSError:
                continue
            entries.append((str(path), info.st_mtime_ns, info.st_size))
    return tuple(entries)


class CatalogueCache:
    """Hands out the current catalogue of `installers_dir`."""

    def __init__(self, installers_dir: Path) -> None:
        self._dir = installers_dir
        self._stamp = _stamp(installers_dir)
        self._catalogue = Catalogue.load(installers_dir)
        self._checked_at = time.monotonic()

    def current(self) -> Catalogue:
        """The catalogue, re-loaded if any app file changed since the last look."""
        now = time.monotonic()
        if now - self._checked_at >= CHECK_INTERVAL_S:
            self._checked_at = now
            stamp = _stamp(self._dir)
            if stamp != self._stamp:
                self._stamp = stamp
                self._catalogue = Catalogue.load(self._dir)
        return self._catalogue
