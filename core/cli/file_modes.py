"""Who could change what root will run: the file modes `provision apps check` insists on.

The agent refuses to run a script that anyone but root or its own user could change
(`unsafe_path`); this check says so at authoring time, naming the mode to use instead. Who
counts as "anyone else" is decided once, by `core.runtime.catalogue.write_access_problems`,
the rule the catalogue and the agent's layer 4 apply to the app's folder and script too.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path

from core.runtime.catalogue import write_access_problems


def file_mode_problems(
    folder: Path, entry_points: Sequence[str] = ("install.sh", "uninstall.sh")
) -> list[str]:
    """Scripts that anyone but their owner could change, or that the agent cannot run.

    Every `*.sh` in the folder and each of `entry_points` that exists is checked; the entry
    points must also be executable. The folder must be a real folder that only root or the
    current user can change, and the manifest must not be world-writable.
    """
    problems: list[str] = []
    try:
        folder_info = folder.lstat()
    except OSError as error:
        return [f"the folder cannot be read: {error.strerror or error}"]
    if stat.S_ISLNK(folder_info.st_mode):
        return ["the folder is a symbolic link (the agent refuses it: unsafe_path)"]
    problems.extend(write_access_problems("the folder", folder_info))
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
        problems.extend(write_access_problems(name, info, use_mode="0755"))
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
