"""The catalogue: every app under `installers/`, valid or not (reads files; docs/architecture.md
§2).

A broken app never breaks the catalogue: `load_app` turns every problem (a missing or invalid
manifest, a missing script, a symlinked script, a missing icon) into an entry listed as
invalid with its reasons, which the panel shows and `provision apps check` reports. The
fingerprint is computed from the very bytes that were parsed, so the panel signs exactly what
it validated against. This module reads files only; it opens no socket and starts no process.
"""

from __future__ import annotations

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
    """Files the manifest names that are missing or not plain files in the folder."""
    problems: list[str] = []
    for name, what in (
        (manifest.script, "script"),
        (manifest.uninstall, "uninstall script"),
        (manifest.icon, "icon"),
    ):
        if name is not None:
            problem = _file_problem(folder, name, what)
            if problem:
                problems.append(problem)
    return problems


def _is_app_folder(path: Path) -> bool:
    # `_lib` holds shared shell helpers and dot-folders are editor or VCS state, not apps.
    return not path.name.startswith(("_", ".")) and path.is_dir() and not path.is_symlink()


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
