"""Which catalogue a process uses when PROV_INSTALLERS_DIR is unset."""

from __future__ import annotations

from pathlib import Path

from core.runtime.settings import BUNDLED_INSTALLERS_DIR, CommonSettings, default_installers_dir

REPO = Path(__file__).resolve().parents[2]


def test_the_bundled_catalogue_is_the_one_beside_the_packages():
    # In a clone that is the repo's own folder; an installed wheel carries its copy there.
    assert BUNDLED_INSTALLERS_DIR == REPO / "installers"
    assert (BUNDLED_INSTALLERS_DIR / "hello-web" / "manifest.yml").is_file()


def test_a_folder_without_installers_uses_the_bundled_catalogue(tmp_path):
    assert default_installers_dir(tmp_path) == BUNDLED_INSTALLERS_DIR


def test_an_installers_folder_in_the_working_directory_wins(tmp_path):
    (tmp_path / "installers").mkdir()
    assert default_installers_dir(tmp_path) == (tmp_path / "installers").resolve()


def test_the_variable_wins_over_both(tmp_path, monkeypatch):
    (tmp_path / "installers").mkdir()
    monkeypatch.chdir(tmp_path)
    chosen = tmp_path / "mine"
    settings = CommonSettings.from_env({"PROV_INSTALLERS_DIR": str(chosen)})
    assert settings.installers_dir == chosen
    assert CommonSettings.from_env({}).installers_dir == (tmp_path / "installers").resolve()
