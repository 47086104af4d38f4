"""`provision apps list|check` (DESIGN §7)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from core.cli import main
from core.cli_apps import apps

REPO_INSTALLERS = Path(__file__).resolve().parents[2] / "installers"


def write_app(root: Path, app_id: str, manifest: str) -> None:
    folder = root / app_id
    folder.mkdir()
    (folder / "manifest.yml").write_text(manifest)
    (folder / "install.sh").write_text("#!/bin/sh\n")


def good(app_id: str) -> str:
    return f"id: {app_id}\nname: App {app_id}\nversion: '2.0'\ncategory: tools\n"


def test_check_passes_on_the_repos_real_installers():
    result = CliRunner().invoke(main, ["apps", "check", "--installers-dir", str(REPO_INSTALLERS)])
    assert result.exit_code == 0, result.output
    assert "apps OK" in result.output


def test_check_reads_the_installers_dir_from_prov_installers_dir(tmp_path):
    write_app(tmp_path, "one", good("one"))
    result = CliRunner().invoke(apps, ["check"], env={"PROV_INSTALLERS_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    assert "1 apps OK" in result.output


def test_check_exits_non_zero_naming_every_problem(tmp_path):
    write_app(tmp_path, "fine", good("fine"))
    write_app(tmp_path, "broken", "id: broken\nname: B\nversion: '1'\ncolour: red\ntimeout: 0\n")
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "broken" in result.output
    assert "colour: unknown field" in result.output
    assert "timeout" in result.output
    assert "1 of 2 apps invalid" in result.output


def test_check_fails_when_the_installers_dir_does_not_exist(tmp_path):
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(tmp_path / "none")])
    assert result.exit_code != 0
    assert "does not exist" in result.output


def test_list_shows_a_table_with_validity_and_reason(tmp_path):
    write_app(tmp_path, "fine", good("fine"))
    write_app(tmp_path, "broken", "id: other\nname: B\nversion: '1'\n")
    result = CliRunner().invoke(apps, ["list", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "NAME", "VERSION", "CATEGORY", "STATUS"]
    assert lines[1].startswith("broken")
    assert "invalid: id: must equal the folder name" in lines[1]
    assert lines[2].startswith("fine")
    assert "App fine" in lines[2]
    assert lines[2].endswith("valid")


def test_list_json_gives_objects_with_fingerprint_and_problems(tmp_path):
    write_app(tmp_path, "fine", good("fine"))
    write_app(tmp_path, "broken", "not: [valid\n")
    result = CliRunner().invoke(apps, ["list", "--json", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    listed = {item["id"]: item for item in json.loads(result.output)}
    assert listed["fine"]["valid"] is True
    assert listed["fine"]["fingerprint"].startswith("sha256:")
    assert listed["fine"]["problems"] == []
    assert listed["fine"]["version"] == "2.0"
    assert listed["broken"]["valid"] is False
    assert listed["broken"]["fingerprint"] is None
    assert listed["broken"]["problems"]
