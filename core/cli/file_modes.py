"""Who could change what root will run: the file modes `provision apps check` insists on.

The agent refuses to run a script that anyone but root or its own user could change
(`unsafe_path`); this check says so at authoring time, naming the mode to use instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path


def file_mode_problems(
    folder: Path, entry_points: Sequence[str] = ("install.sh", "uninstall.sh")
) -> list[str]:
    """Scripts that anyone but their owner could change, or that the agent cannot run.

    Every `*.sh` in the folder and each of `entry_points` that exists is checked; the entry
    points must also be executable. The manifest and the folder must not be world-writable.
    """
    problems: list[str] = []
    allowed_owners = {0, os.getuid()}
    try:
        folder_mode = folder.lstat().st_mode
    except OSError as error:
        return [f"the folder cannot be read: {error.strerror or error}"]
    if folder_mode & stat.S_IWOTH:
        problems.append(f"the folder is world-writable (mode {stat.S_IMODE(folder_mode):04o})")
    names = sorted({path.name for path in folder.glob("*.sh")} | set(entry_points))
    for name in names:
        path = folder / name
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # a missing script the manifest names is reported by the catalogue
        except OSError as error:
            problems.append(f"{name} cannot be read: {error.strerror or error}")
            continue
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            problems.append(f"{name} is not a regular file")
            continue
        if mode & stat.S_IWOTH:
            problems.append(f"{name} is world-writable (mode {mode:04o}; use 0755)")
        elif mode & stat.S_IWGRP:
            problems.append(f"{name} is group-writable (mode {mode:04o}; use 0755)")
        if info.st_uid not in allowed_owners:
            problems.append(f"{name} is owned by uid {info.st_uid}, not root or the current user")
        if name in entry_points and not mode & stat.S_IXUSR:
            problems.append(f"{name} is not executable (mode {mode:04o}; use 0755)")
    manifest = folder / "manifest.yml"
    try:
        manifest_mode = stat.S_IMODE(manifest.lstat().st_mode)
    except OSError:
        manifest_mode = 0  # a missing manifest is reported by the catalogue
    if manifest_mode & stat.S_IWOTH:
        problems.append(f"manifest.yml is world-writable (mode {manifest_mode:04o}; use 0644)")
    return problems


# --- shellcheck -----------------------------------------------------------------------------
