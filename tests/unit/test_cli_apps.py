"""`provision apps list|check` (docs/architecture.md §7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from core.cli.apps import apps
from core.cli.root import main

REPO_INSTALLERS = Path(__file__).resolve().parents[2] / "installers"


def write_app(root: Path, app_id: str, manifest: str, script: str = "#!/bin/sh\n") -> Path:
    folder = root / app_id
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "manifest.yml").write_text(manifest)
    (folder / "manifest.yml").chmod(0o644)
    (folder / "install.sh").write_text(script)
    (folder / "install.sh").chmod(0o755)
    return folder


def good(app_id: str) -> str:
    return f"id: {app_id}\nname: App {app_id}\nversion: '2.0'\ncategory: tools\n"


def test_check_passes_on_the_repos_real_installers():
    result = CliRunner().invoke(main, ["apps", "check", "--installers-dir", str(REPO_INSTALLERS)])
    assert result.exit_code == 0, result.output
    assert "apps OK" in result.output


def test_check_passes_on_a_copy_of_hello_web(tmp_path):
    installers = tmp_path / "installers"
    installers.mkdir()
    shutil.copytree(REPO_INSTALLERS / "hello-web", installers / "hello-web")
    result = CliRunner().invoke(main, ["apps", "check", "--installers-dir", str(installers)])
    assert result.exit_code == 0, result.output
    assert "1 apps OK" in result.output


def test_check_fails_an_app_whose_script_fails_the_lint(tmp_path):
    manifest = good("lint") + "inputs:\n  - {name: port, type: port}\n"
    script = "#!/usr/bin/env bash\nset -x\nrm -rf $TARGET/cache\n"
    write_app(tmp_path, "lint", manifest, script)
    write_app(tmp_path, "fine", good("fine"))
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert "lint: fails the checks" in lines
    assert "  - lint: install.sh:2: `set -x` turns on xtrace" in result.output
    assert "  - lint: install.sh reads $TARGET (line 3), which no input declares" in lines
    assert "  - lint: input 'port' (PORT) is declared but never used" in lines
    assert any(line.startswith("  - lint: install.sh:3: ") and "[SC2086]" in line for line in lines)
    assert "fine" not in result.output.replace("fails the checks", "")
    assert "1 of 2 apps invalid" in lines


def test_check_fails_on_a_non_executable_script(tmp_path):
    folder = write_app(tmp_path, "one", good("one"))
    (folder / "install.sh").chmod(0o644)
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "  - one: install.sh is not executable (mode 0644; use 0755)" in result.output


def test_check_lints_the_shared_library_once(tmp_path):
    write_app(tmp_path, "one", good("one"))
    lib = tmp_path / "_lib"
    lib.mkdir()
    (lib / "common.sh").write_text("#!/usr/bin/env bash\nhelper() {\n  rm $1\n}\n")
    (lib / "common.sh").chmod(0o644)
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "_lib: fails the checks" in result.output
    assert result.output.count("_lib/common.sh:3: ") == 1
    assert "0 of 1 apps invalid" in result.output
    (lib / "common.sh").write_text('#!/usr/bin/env bash\nhelper() {\n  rm -- "$1"\n}\n')
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output


def test_list_shows_manifest_validity_only(tmp_path):
    folder = write_app(tmp_path, "one", good("one"), "#!/bin/sh\nset -x\n")
    (folder / "install.sh").chmod(0o644)
    result = CliRunner().invoke(apps, ["list", "--installers-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].endswith("valid")


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
