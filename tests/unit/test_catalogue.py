"""Loading the catalogue of apps from installers/ (docs/architecture.md §2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.manifest.model import app_fingerprint
from core.runtime.catalogue import Catalogue, load_app

GOOD_MANIFEST = """\
id: {app_id}
name: App {app_id}
version: "1.0"
category: tools
icon: icon.svg
inputs:
  - name: port
    type: port
    default: 8080
"""
SCRIPT = b"#!/usr/bin/env bash\nset -euo pipefail\necho hi\n"


def make_app(
    root: Path, app_id: str, manifest: str | None = None, *, script: bool = True, icon: bool = True
) -> Path:
    folder = root / app_id
    folder.mkdir()
    (folder / "manifest.yml").write_text(
        manifest if manifest is not None else GOOD_MANIFEST.format(app_id=app_id)
    )
    if script:
        (folder / "install.sh").write_bytes(SCRIPT)
    if icon:
        (folder / "icon.svg").write_text("<svg/>")
    return folder


def test_a_good_app_loads_as_valid_with_its_fingerprint(tmp_path):
    folder = make_app(tmp_path, "good")
    entry = load_app(folder)
    assert entry.valid
    assert entry.problems == ()
    assert entry.manifest is not None
    assert entry.manifest.id == "good"
    expected = app_fingerprint((folder / "manifest.yml").read_bytes(), SCRIPT)
    assert entry.fingerprint == expected


def test_the_fingerprint_changes_when_the_script_changes(tmp_path):
    folder = make_app(tmp_path, "good")
    before = load_app(folder).fingerprint
    (folder / "install.sh").write_bytes(SCRIPT + b"echo more\n")
    assert load_app(folder).fingerprint != before


def test_a_broken_manifest_is_listed_invalid_with_its_reason_while_others_load(tmp_path):
    make_app(tmp_path, "alpha")
    make_app(tmp_path, "broken", "id: broken\nname: B\nversion: '1'\ncolour: red\n")
    make_app(tmp_path, "zeta")
    catalogue = Catalogue.load(tmp_path)
    assert [e.app_id for e in catalogue.apps] == ["alpha", "broken", "zeta"]
    assert [e.app_id for e in catalogue.valid_apps] == ["alpha", "zeta"]
    (broken,) = catalogue.invalid_apps
    assert broken.app_id == "broken"
    assert not broken.valid
    assert broken.fingerprint is None
    assert any("colour: unknown field" in p for p in broken.problems)


def test_invalid_yaml_does_not_break_the_catalogue(tmp_path):
    make_app(tmp_path, "bad", "id: [unclosed\n")
    make_app(tmp_path, "ok")
    catalogue = Catalogue.load(tmp_path)
    assert [e.app_id for e in catalogue.valid_apps] == ["ok"]
    assert any("YAML" in p for p in catalogue.invalid_apps[0].problems)


def test_a_folder_without_a_manifest_is_listed_invalid(tmp_path):
    (tmp_path / "empty").mkdir()
    (entry,) = Catalogue.load(tmp_path).apps
    assert entry.problems == ("manifest.yml is missing",)


def test_a_missing_script_is_a_problem(tmp_path):
    entry = load_app(make_app(tmp_path, "noscript", script=False))
    assert not entry.valid
    assert "script install.sh is missing" in entry.problems


def test_a_missing_icon_is_a_problem(tmp_path):
    entry = load_app(make_app(tmp_path, "noicon", icon=False))
    assert "icon icon.svg is missing" in entry.problems
    # The manifest is kept so the panel can still show the app's name.
    assert entry.manifest is not None


def test_a_symlinked_script_is_a_problem(tmp_path):
    outside = tmp_path / "outside.sh"
    outside.write_bytes(SCRIPT)
    apps = tmp_path / "apps"
    apps.mkdir()
    folder = make_app(apps, "linked", script=False)
    (folder / "install.sh").symlink_to(outside)
    entry = load_app(folder)
    assert "script install.sh is a symbolic link" in entry.problems
    assert entry.fingerprint is None


def test_a_script_that_is_a_directory_is_a_problem(tmp_path):
    folder = make_app(tmp_path, "dirscript", script=False)
    (folder / "install.sh").mkdir()
    assert "script install.sh is not a regular file" in load_app(folder).problems


def test_a_symlinked_manifest_is_a_problem(tmp_path):
    apps = tmp_path / "apps"
    apps.mkdir()
    folder = make_app(apps, "linkman")
    real = tmp_path / "real.yml"
    real.write_text(GOOD_MANIFEST.format(app_id="linkman"))
    (folder / "manifest.yml").unlink()
    (folder / "manifest.yml").symlink_to(real)
    assert any("symbolic link" in p for p in load_app(folder).problems)


def test_a_manifest_that_is_not_a_regular_file_is_a_problem(tmp_path):
    folder = make_app(tmp_path, "dirman")
    (folder / "manifest.yml").unlink()
    (folder / "manifest.yml").mkdir()
    entry = load_app(folder)
    assert entry.problems == ("manifest.yml cannot be read: is not a regular file",)


def test_a_folder_named_unlike_an_app_id_is_invalid(tmp_path):
    make_app(tmp_path, "Bad Name", GOOD_MANIFEST.format(app_id="bad"))
    (entry,) = Catalogue.load(tmp_path).apps
    assert not entry.valid
    assert any("not a valid app id" in p for p in entry.problems)


def test_underscore_and_dot_folders_and_plain_files_are_skipped(tmp_path):
    (tmp_path / "_lib").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "README.md").write_text("hi")
    make_app(tmp_path, "app")
    assert [e.app_id for e in Catalogue.load(tmp_path).apps] == ["app"]


def test_a_missing_installers_dir_gives_an_empty_catalogue(tmp_path):
    assert Catalogue.load(tmp_path / "nope").apps == ()


@pytest.mark.parametrize(
    "hostile", ["../app", "app/../app", "", "APP", "app\x00", "a" * 1000, None, 3]
)
def test_get_returns_none_for_hostile_ids(tmp_path, hostile):
    make_app(tmp_path, "app")
    assert Catalogue.load(tmp_path).get(hostile) is None


def test_get_finds_an_app_by_id(tmp_path):
    make_app(tmp_path, "app")
    entry = Catalogue.load(tmp_path).get("app")
    assert entry is not None
    assert entry.valid
    assert Catalogue.load(tmp_path).get("other") is None
