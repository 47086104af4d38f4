"""Whether root may run an app folder's script (docs/architecture.md §6, layer 4).

`core.runtime.catalogue.unsafe_path_problems` decides it once; the catalogue lists such an app
as invalid with the reason, `provision apps check` exits 1 naming it, and the agent refuses it
with `unsafe_path` (the integration test in tests/integration/test_agent.py proves nothing
runs).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.checks import check_script_path, check_whitelist
from core.cli.apps import apps
from core.cli.file_modes import file_mode_problems
from core.errors import JobRejected
from core.reasons import Reason
from core.runtime.catalogue import Catalogue, load_app, unsafe_path_problems

NOBODY = 65534
MANIFEST = "id: {app_id}\nname: App {app_id}\nversion: '1.0'\ncategory: tools\n"
SCRIPT = "#!/usr/bin/env bash\nset -euo pipefail\necho hi\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")


def make_app(root: Path, app_id: str = "app") -> Path:
    """An app folder with the modes `provision apps check` asks for, whatever the umask."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / app_id
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "manifest.yml").write_text(MANIFEST.format(app_id=app_id))
    (folder / "manifest.yml").chmod(0o644)
    (folder / "install.sh").write_text(SCRIPT)
    (folder / "install.sh").chmod(0o755)
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_app(tmp_path / "installers")


def linked_folder(tmp_path: Path) -> Path:
    """`installers/app`, a symbolic link to a good app folder outside the installers."""
    real = make_app(tmp_path / "elsewhere")
    link = tmp_path / "installers" / "app"
    link.parent.mkdir()
    link.symlink_to(real, target_is_directory=True)
    return link


def test_a_safe_folder_and_script_may_be_run(folder):
    assert unsafe_path_problems(folder, "install.sh") == []
    assert load_app(folder).valid
    assert load_app(folder).unsafe_path == ()


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o777, "script install.sh is world-writable (mode 0777; use 0755)"),
        (0o775, "script install.sh is group-writable (mode 0775; use 0755)"),
        (0o757, "script install.sh is world-writable (mode 0757; use 0755)"),
    ],
)
def test_a_script_others_can_write_is_unsafe(folder, mode, problem):
    (folder / "install.sh").chmod(mode)
    assert unsafe_path_problems(folder, "install.sh") == [problem]


@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        (0o775, "the app folder is group-writable (mode 0775)"),
        (0o777, "the app folder is world-writable (mode 0777)"),
        (0o1777, "the app folder is world-writable (mode 1777)"),
    ],
)
def test_a_folder_others_can_write_is_unsafe(folder, mode, problem):
    folder.chmod(mode)
    assert unsafe_path_problems(folder, "install.sh") == [problem]


def test_a_folder_that_is_a_symbolic_link_is_unsafe(tmp_path):
    link = linked_folder(tmp_path)
    assert unsafe_path_problems(link, "install.sh") == ["the app folder is a symbolic link"]


def test_a_script_that_links_out_of_its_folder_is_unsafe(folder, tmp_path):
    outside = tmp_path / "outside.sh"
    outside.write_text(SCRIPT)
    (folder / "install.sh").unlink()
    (folder / "install.sh").symlink_to(outside)
    assert unsafe_path_problems(folder, "install.sh") == ["script install.sh is a symbolic link"]


def test_a_script_name_that_is_not_a_bare_sh_name_is_unsafe(folder):
    assert unsafe_path_problems(folder, "../install.sh") == [
        "script '../install.sh' is not a bare .sh name"
    ]
    assert unsafe_path_problems(folder, "manifest.yml") == [
        "script 'manifest.yml' is not a bare .sh name"
    ]


@needs_root
def test_a_script_owned_by_another_user_is_unsafe(folder):
    os.chown(folder / "install.sh", NOBODY, NOBODY)
    assert unsafe_path_problems(folder, "install.sh") == [
        f"script install.sh is owned by uid {NOBODY}, not root or the current user"
    ]


@needs_root
def test_a_folder_owned_by_another_user_is_unsafe(folder):
    os.chown(folder, NOBODY, NOBODY)
    assert unsafe_path_problems(folder, "install.sh") == [
        f"the app folder is owned by uid {NOBODY}, not root or the current user"
    ]


# --- the three users of the rule ------------------------------------------------------------


def test_the_catalogue_lists_an_unsafe_app_as_invalid_with_the_reason(folder):
    (folder / "install.sh").chmod(0o777)
    entry = Catalogue.load(folder.parent).get("app")
    assert entry is not None
    assert not entry.valid
    assert entry.fingerprint is None
    problem = "script install.sh is world-writable (mode 0777; use 0755)"
    assert entry.unsafe_path == (problem,)
    assert problem in entry.problems
    assert Catalogue.load(folder.parent).valid_apps == ()


def test_the_catalogue_lists_a_symlinked_app_folder_as_invalid(tmp_path):
    link = linked_folder(tmp_path)
    (entry,) = Catalogue.load(link.parent).apps
    assert entry.app_id == "app"
    assert not entry.valid
    assert entry.unsafe_path == ("the app folder is a symbolic link",)


def test_the_agent_refuses_an_unsafe_app_with_unsafe_path(folder):
    (folder / "install.sh").chmod(0o777)
    with pytest.raises(JobRejected) as caught:
        check_whitelist(folder.parent, "app")
    assert caught.value.reason == Reason.UNSAFE_PATH
    assert "world-writable" in str(caught.value)


def test_the_agent_refuses_a_symlinked_app_folder_with_unsafe_path(tmp_path):
    link = linked_folder(tmp_path)
    with pytest.raises(JobRejected) as caught:
        check_whitelist(link.parent, "app")
    assert caught.value.reason == Reason.UNSAFE_PATH
    assert "symbolic link" in str(caught.value)


def test_layer_4_judges_the_files_again_as_they_are_now(folder):
    app = check_whitelist(folder.parent, "app")
    assert check_script_path(app) == folder.resolve() / "install.sh"
    (folder / "install.sh").chmod(0o775)  # changed after layer 2 loaded the app
    with pytest.raises(JobRejected) as caught:
        check_script_path(app)
    assert caught.value.reason == Reason.UNSAFE_PATH
    assert "group-writable" in str(caught.value)


def test_file_modes_refuse_a_group_writable_or_symlinked_folder(folder, tmp_path):
    folder.chmod(0o775)
    assert file_mode_problems(folder) == ["the folder is group-writable (mode 0775)"]
    link = linked_folder(tmp_path / "second")
    assert file_mode_problems(link) == [
        "the folder is a symbolic link (the agent refuses it: unsafe_path)"
    ]


def test_apps_check_exits_1_naming_a_world_writable_script(folder):
    (folder / "install.sh").chmod(0o777)
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(folder.parent)])
    assert result.exit_code == 1, result.output
    assert "app: invalid" in result.output.splitlines()
    assert "  - app: script install.sh is world-writable (mode 0777; use 0755)" in result.output


def test_apps_check_exits_1_naming_a_symlinked_app_folder(tmp_path):
    link = linked_folder(tmp_path)
    result = CliRunner().invoke(apps, ["check", "--installers-dir", str(link.parent)])
    assert result.exit_code == 1, result.output
    assert "app: invalid" in result.output.splitlines()
    assert "  - app: the app folder is a symbolic link" in result.output
