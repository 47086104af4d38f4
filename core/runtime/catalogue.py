"""The catalogue: every app under `installers/`, valid or not (reads files; docs/architecture.md
§2).

A broken app never breaks the catalogue: `load_app` turns every problem (a missing or invalid
manifest, a missing script, a symlinked script, a missing icon, a folder or script that
someone other than root could change) into an entry listed as invalid with its reasons, which
the panel shows and `provision apps check` reports. `unsafe_path_problems` is the one place
that decides whether root may run an app folder's script: the catalogue, `apps check` and the
agent's layer 4 (docs/architecture.md §6) all ask it. The
fingerprint is computed from the very bytes that were parsed, so the panel signs exactly what
it validated against. This module reads files only; it opens no socket and starts no process.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from core.errors import ManifestError
from core.manifest.model import Manifest, app_fingerprint, is_valid_app_id
from core.manifest.parse import parse_manifest

MANIFEST_NAME = "manifest.yml"
# Generous bounds: reading must stay cheap even if someone drops a huge file in a folder.
_MAX_MANIFEST_READ = 1024 * 1024
_MAX_SCRIPT_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AppEntry:
    """One app folder: its manifest when it parsed, and every problem found."""

    app_id: str
    folder: Path
    manifest: Manifest | None
    problems: tuple[str, ...]
    fingerprint: str | None
    # The problems (also in `problems`) that make running its script unsafe: the agent
    # refuses such an app with `unsafe_path` rather than `not_whitelisted`.
    unsafe_path: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        """Whether the app can be offered and submitted."""
        return self.manifest is not None and not self.problems and self.fingerprint is not None


def _read_limited(path: Path, limit: int) -> bytes:
    """The bytes of a regular file, refusing symlinks, special files and oversized files."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise ValueError("is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError("is not a regular file")
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"is larger than {limit // 1024} KiB")
    return data


def _file_problem(folder: Path, name: str, what: str) -> str | None:
    """Why `folder/name` is not a usable regular file inside the folder, or None."""
    path = folder / name
    try:
        info = path.lstat()
    except FileNotFoundError:
        return f"{what} {name} is missing"
    except OSError as error:
        return f"{what} {name} cannot be read: {error.strerror or error}"
    if stat.S_ISLNK(info.st_mode):
        return f"{what} {name} is a symbolic link"
    if not stat.S_ISREG(info.st_mode):
        return f"{what} {name} is not a regular file"
    return None


def write_access_problems(
    label: str, info: os.stat_result, *, use_mode: str | None = None
) -> list[str]:
    """Who but root and this process's user could change the file or folder `info` describes.

    A group- or world-writable mode, or an owner other than root or the current user, each
    lets an unprivileged local user change what root will run. `label` starts each problem;
    `use_mode` is the mode to suggest instead.
    """
    problems: list[str] = []
    mode = stat.S_IMODE(info.st_mode)
    advice = f"; use {use_mode}" if use_mode else ""
    if mode & stat.S_IWOTH:
        problems.append(f"{label} is world-writable (mode {mode:04o}{advice})")
    elif mode & stat.S_IWGRP:
        problems.append(f"{label} is group-writable (mode {mode:04o}{advice})")
    if info.st_uid not in (0, os.getuid()):
        problems.append(f"{label} is owned by uid {info.st_uid}, not root or the current user")
    return problems


def unsafe_path_problems(folder: Path, script: str | None) -> list[str]:
    """Why root must not run `script` of the app in `folder`; empty when it may (layer 4).

    The folder is a real directory (not a symbolic link) and the script a regular `.sh` file
    right inside it (not a symbolic link, not resolving elsewhere), and neither is writable by
    group or others or owned by anyone but root or this process's user. With `script` None
    (no manifest names one) only the folder is judged.
    """
    try:
        folder_info = folder.lstat()
    except OSError as error:
        return [f"the app folder cannot be read: {error.strerror or error}"]
    if stat.S_ISLNK(folder_info.st_mode):
        return ["the app folder is a symbolic link"]
    if not stat.S_ISDIR(folder_info.st_mode):
        return ["the app folder is not a directory"]
    problems = write_access_problems("the app folder", folder_info)
    if script is None:
        return problems
    # The parser already insists on this; the check stays for anyone calling with a name.
    if "/" in script or "\x00" in script or not script.endswith(".sh") or script == ".sh":
        return [*problems, f"script {script!r} is not a bare .sh name"]
    problem = _file_problem(folder, script, "script")
    if problem is not None:
        return [*problems, problem]
    path = folder / script
    try:
        inside = path.resolve(strict=True).parent == folder.resolve(strict=True)
        info = path.lstat()
    except (OSError, RuntimeError) as error:
        return [*problems, f"script {script} cannot be read: {error}"]
    if not inside:
        problems.append(f"script {script} lies outside its app folder")
    problems.extend(write_access_problems(f"script {script}", info, use_mode="0755"))
    return problems


def load_app(folder: Path) -> AppEntry:
    """Load one app folder; never raises for a broken app, it records the problems instead."""
    app_id = folder.name
    problems: list[str] = []
    if not is_valid_app_id(app_id):
        problems.append("the folder name is not a valid app id (^[a-z0-9][a-z0-9_-]{0,62}$)")

    try:
        manifest_bytes: bytes | None = _read_limited(folder / MANIFEST_NAME, _MAX_MANIFEST_READ)
    except FileNotFoundError:
        manifest_bytes = None
        problems.append(f"{MANIFEST_NAME} is missing")
    except (OSError, ValueError) as error:
        manifest_bytes = None
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        problems.append(f"{MANIFEST_NAME} cannot be read: {reason}")

    manifest: Manifest | None = None
    if manifest_bytes is not None:
        try:
            manifest = _parse_manifest_cached(manifest_bytes, app_id)
        except ManifestError as error:
            problems.extend(error.problems)

    unsafe = unsafe_path_problems(folder, manifest.script if manifest is not None else None)
    problems.extend(unsafe)
    fingerprint: str | None = None
    if manifest is not None:
        problems.extend(_folder_problems(folder, manifest))
        if manifest_bytes is not None and not problems:
            try:
                script_bytes = _read_limited(folder / manifest.script, _MAX_SCRIPT_BYTES)
            except (OSError, ValueError) as error:
                problems.append(f"script {manifest.script} cannot be read: {error}")
            else:
                fingerprint = app_fingerprint(manifest_bytes, script_bytes)

    return AppEntry(
        app_id=app_id,
        folder=folder,
        # Kept even when other problems exist, so the panel can still show its name.
        manifest=manifest,
        problems=tuple(problems),
        fingerprint=fingerprint,
        unsafe_path=tuple(unsafe),
    )


@lru_cache(maxsize=256)
def _parse_manifest_cached(manifest_bytes: bytes, app_id: str) -> Manifest:
    """`parse_manifest`, remembered by the exact bytes (and folder name) it parsed.

    The agent loads an app twice per job (checks, then again just before the run, in case the
    files changed while it waited): the YAML parse was a tenth of its time. The result is a
    pure function of these arguments and a frozen value, so a changed file is simply a
    different key and is parsed afresh; an invalid manifest raises and is not remembered.
    """
    return parse_manifest(manifest_bytes, folder_name=app_id)


def _folder_problems(folder: Path, manifest: Manifest) -> list[str]:
    """Files the manifest names, but the script (`unsafe_path_problems` judges it), that are
    missing or not plain files in the folder."""
    problems: list[str] = []
    for name, what in (
        (manifest.uninstall, "uninstall script"),
        (manifest.icon, "icon"),
    ):
        if name is not None:
            problem = _file_problem(folder, name, what)
            if problem:
                problems.append(problem)
    return problems


def _is_app_folder(path: Path) -> bool:
    # `_lib` holds shared shell helpers and dot-folders are editor or VCS state, not apps. A
    # symbolic link to a folder is listed, as invalid (`unsafe_path_problems`), so that
    # `apps check` names it and the agent refuses it with `unsafe_path`.
    return not path.name.startswith(("_", ".")) and path.is_dir()


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Every app folder under an installers directory, sorted by id."""

    apps: tuple[AppEntry, ...]

    @classmethod
    def load(cls, installers_dir: Path) -> Catalogue:
        """Load every `installers_dir/*/manifest.yml`; broken apps are listed as invalid."""
        try:
            folders = [path for path in installers_dir.iterdir() if _is_app_folder(path)]
        except OSError:
            folders = []
        entries = [load_app(folder) for folder in folders]
        return cls(apps=tuple(sorted(entries, key=lambda entry: entry.app_id)))

    def get(self, app_id: object) -> AppEntry | None:
        """The entry for `app_id`, or None; anything that is not a valid app id gives None."""
        if not is_valid_app_id(app_id):
            return None
        return next((entry for entry in self.apps if entry.app_id == app_id), None)

    @property
    def valid_apps(self) -> tuple[AppEntry, ...]:
        """The apps that can be submitted."""
        return tuple(entry for entry in self.apps if entry.valid)

    @property
    def invalid_apps(self) -> tuple[AppEntry, ...]:
        """The apps listed with problems."""
        return tuple(entry for entry in self.apps if not entry.valid)
