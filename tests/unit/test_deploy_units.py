"""The production install's systemd files in deploy/ (docs/deploy.md).

`systemd-analyze verify` checks the panel unit, the agent unit and the drop-in for Debian's
redis-server unit as systemd would load them. It also checks that every `ExecStart=` binary
exists, and `/usr/local/bin/provision` (the pipx install) is not on a CI machine, so each check
runs in a temporary root (`verify --root=`): the system's own unit folders copied in (targets
such as sysinit.target must resolve), our files copied byte for byte into its
/etc/systemd/system, and a stub executable at each binary our files name. Two control tests
show that this root still catches a missing binary and a broken drop-in.

Then the properties that matter are read from the files themselves, and Debian's redis-server
is started with the drop-in's arguments to prove this version accepts them.

Needs `systemd-analyze` (Debian package `systemd`) and, for the Redis checks, Debian's
`redis-server`; without them the tests skip, which `PROV_TESTS_STRICT=1` (CI) turns into
failures.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from core.runtime.settings import AgentSettings, PanelSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PANEL_UNIT = DEPLOY / "provision-panel.service"
AGENT_UNIT = DEPLOY / "provision-agent.service"
REDIS_UNIT = "redis-server.service"
REDIS_DROPIN = DEPLOY / f"{REDIS_UNIT}.d" / "provision.conf"
PANEL_ENV = DEPLOY / "panel.env.example"
AGENT_ENV = DEPLOY / "agent.env.example"
OUR_FILES = (PANEL_UNIT, AGENT_UNIT, REDIS_DROPIN)

# Where the pipx install puts the command (PIPX_BIN_DIR=/usr/local/bin).
PROVISION_BINARY = "/usr/local/bin/provision"
REDIS_SOCKET = "/run/redis/redis-server.sock"
# The vendor unit folders: one folder on a merged-/usr system (Debian 12), two otherwise.
SYSTEM_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
EXEC_KEYS = frozenset(
    {
        "ExecCondition",
        "ExecStartPre",
        "ExecStart",
        "ExecStartPost",
        "ExecReload",
        "ExecStop",
        "ExecStopPost",
    }
)
# systemd's prefixes before an Exec*= command line (systemd.service(5), "Command lines").
EXEC_PREFIXES = "@-:+!"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not found: install Debian's `systemd` package",
)

Directives = dict[str, list[tuple[str, str]]]


# --- reading unit files -------------------------------------------------------------------


def directives(path: Path) -> Directives:
    """`[Section]` -> its `Key=value` lines in order (repeats kept), comments dropped."""
    sections: Directives = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):  # a continued line goes on on the next one
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, equals, value = line.partition("=")
        assert equals, f"{path.name}: not a Key=value line: {line!r}"
        assert current is not None, f"{path.name}: {key} before any [Section]"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: Directives, section: str, key: str) -> list[str]:
    """Every value `key` has in `section`, in order."""
    return [value for name, value in unit.get(section, []) if name == key]


def value(unit: Directives, section: str, key: str) -> str:
    """The value that counts: the last one (an empty list of them fails the test)."""
    found = values(unit, section, key)
    assert found, f"no {key}= in [{section}]"
    return found[-1]


def words(unit: Directives, section: str, key: str) -> set[str]:
    """Space-separated list settings (After=, Wants=, ...), all lines together."""
    return {word for line in values(unit, section, key) for word in line.split()}


def command_line(exec_value: str) -> list[str]:
    """An Exec*= value as argv, its `-`, `@`, `+`, ... prefixes removed."""
    return shlex.split(exec_value.lstrip(EXEC_PREFIXES))


def binaries(unit: Directives) -> set[str]:
    """The absolute executables every Exec*= line of `unit` starts."""
    found = set()
    for section in unit.values():
        for key, exec_value in section:
            if key in EXEC_KEYS and exec_value:
                program = command_line(exec_value)[0]
                if program.startswith("/"):
                    found.add(program)
    return found


def option_pairs(argv: list[str]) -> dict[str, str]:
    """redis-server's `--name value` options (after its config file) as a mapping."""
    options = argv[1:]
    if options and not options[0].startswith("-"):
        options = options[1:]  # the config file
    assert len(options) % 2 == 0, f"an option without a value in {options}"
    names, settings = options[0::2], options[1::2]
    assert all(name.startswith("--") for name in names), names
    return {name.removeprefix("--"): setting for name, setting in zip(names, settings, strict=True)}


def debian_redis_unit() -> Path | None:
    """Debian's redis-server unit on this machine, if the package is installed."""
    for folder in SYSTEM_UNIT_DIRS:
        candidate = folder / REDIS_UNIT
        if candidate.is_file():
            return candidate
    return None


def env_file(path: Path) -> dict[str, str]:
    """The NAME=value lines of an EnvironmentFile example (commented ones left out)."""
    pairs = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            name, equals, setting = line.partition("=")
            assert equals and name == name.strip() and setting == setting.strip(), line
            pairs[name] = setting
    return pairs


def commented_names(path: Path) -> set[str]:
    """The optional variables an example shows commented out (`#PROV_X=...`)."""
    return {
        line[1:].partition("=")[0]
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("#PROV_")
    }


# --- the temporary root for systemd-analyze -----------------------------------------------


def make_root(
    root: Path, *, dropin: str | None = None, stub: bool = True, with_dropin: bool = True
) -> Path:
    """A root for `verify --root=`: system units, our files, stub binaries.

    `dropin` replaces the drop-in's text (control tests only); `stub=False` leaves the
    binaries out; `with_dropin=False` gives Debian's redis unit alone.
    """
    copied: set[Path] = set()
    for folder in SYSTEM_UNIT_DIRS:
        real = folder.resolve()
        if real.is_dir() and real not in copied:
            shutil.copytree(real, root / real.relative_to("/"), symlinks=True)
            copied.add(real)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in (PANEL_UNIT, AGENT_UNIT):
        shutil.copyfile(unit, units / unit.name)
    if with_dropin:
        dropins = units / REDIS_DROPIN.parent.name
        dropins.mkdir()
        target = dropins / REDIS_DROPIN.name
        if dropin is None:
            shutil.copyfile(REDIS_DROPIN, target)
        else:
            target.write_text(dropin, encoding="utf-8")
    if stub:
        programs = set().union(*(binaries(directives(path)) for path in OUR_FILES))
        if (debian := debian_redis_unit()) is not None:
            programs |= binaries(directives(debian))
        for program in programs:
            path = root / program.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            path.chmod(0o755)
    return root


def verify(root: Path, *units: str) -> tuple[int, list[str]]:
    """`systemd-analyze verify` of `units` inside `root`: its exit code and its lines."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        # --man=no: whether a Documentation=man: page is installed is not ours to check.
        [SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_COLORS": "0"},
    )
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.returncode, lines


# --- systemd-analyze verify ---------------------------------------------------------------


@needs_systemd_analyze
def test_the_panel_and_agent_units_verify_without_a_warning(tmp_path):
    code, lines = verify(make_root(tmp_path), PANEL_UNIT.name, AGENT_UNIT.name)
    assert lines == []
    assert code == 0


@needs_systemd_analyze
def test_the_redis_dropin_on_debians_unit_verifies_without_a_warning(tmp_path):
    if debian_redis_unit() is None:
        pytest.skip("Debian's redis-server unit is not installed: install `redis-server`")
    # Debian's unit alone first: whatever it says about itself is not the drop-in's doing.
    _code, baseline = verify(make_root(tmp_path / "alone", with_dropin=False), REDIS_UNIT)
    code, lines = verify(make_root(tmp_path / "with"), REDIS_UNIT)
    assert [line for line in lines if line not in baseline] == []
    assert not any(REDIS_DROPIN.name in line for line in lines)
    assert code == 0


@needs_systemd_analyze
def test_control_the_root_still_catches_a_missing_executable(tmp_path):
    code, lines = verify(make_root(tmp_path, stub=False), PANEL_UNIT.name)
    assert code != 0
    assert any(PROVISION_BINARY in line and "not executable" in line for line in lines), lines


@needs_systemd_analyze
def test_control_the_root_still_catches_a_dropin_that_does_not_clear_execstart(tmp_path):
    if debian_redis_unit() is None:
        pytest.skip("Debian's redis-server unit is not installed: install `redis-server`")
    kept = [
        line
        for line in REDIS_DROPIN.read_text(encoding="utf-8").splitlines()
        if line.strip() != "ExecStart="
    ]
    code, lines = verify(make_root(tmp_path, dropin="\n".join(kept) + "\n"), REDIS_UNIT)
    assert any("more than one ExecStart=" in line for line in lines), lines
    assert code != 0


# --- what the files say -------------------------------------------------------------------


def test_the_panel_runs_unprivileged_with_its_env_file_and_state_directory():
    unit = directives(PANEL_UNIT)
    assert value(unit, "Service", "User") == "provision"
    assert value(unit, "Service", "Group") == "provision"
    assert "root" not in {value(unit, "Service", "User"), value(unit, "Service", "Group")}
    assert values(unit, "Service", "EnvironmentFile") == ["/etc/provision/panel.env"]
    assert values(unit, "Service", "StateDirectory") == ["provision"]
    assert "PROV_DATA_DIR=/var/lib/provision" in values(unit, "Service", "Environment")
    assert command_line(value(unit, "Service", "ExecStart")) == [PROVISION_BINARY, "panel"]
    assert REDIS_UNIT in words(unit, "Unit", "Wants")
    assert REDIS_UNIT in words(unit, "Unit", "After")
    assert value(unit, "Service", "Restart") == "on-failure"
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


def test_the_panel_unit_is_hardened():
    unit = directives(PANEL_UNIT)
    expected = {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "PrivateDevices": "true",
        "ProtectKernelTunables": "true",
        "ProtectKernelModules": "true",
        "ProtectKernelLogs": "true",
        "ProtectControlGroups": "true",
        "LockPersonality": "true",
        "MemoryDenyWriteExecute": "true",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }
    assert {key: value(unit, "Service", key) for key in expected} == expected
    families = value(unit, "Service", "RestrictAddressFamilies").split()
    assert sorted(families) == ["AF_INET", "AF_INET6", "AF_UNIX"]


def test_the_agent_stays_root_and_stops_only_itself():
    unit = directives(AGENT_UNIT)
    assert value(unit, "Service", "User") == "root"
    assert value(unit, "Service", "KillMode") == "process"
    assert value(unit, "Service", "KillSignal") == "SIGTERM"
    assert values(unit, "Service", "EnvironmentFile") == ["/etc/provision/agent.env"]
    assert command_line(value(unit, "Service", "ExecStart")) == [PROVISION_BINARY, "agent"]
    assert value(unit, "Service", "Restart") == "on-failure"
    # systemd must never SIGKILL an agent still inside its own grace periods.
    defaults = AgentSettings.from_env({})
    stop_timeout_s = int(value(unit, "Service", "TimeoutStopSec"))
    assert stop_timeout_s > defaults.shutdown_grace_s + defaults.kill_grace_s


def test_the_dropin_clears_execstart_and_adds_the_durable_options():
    dropin = directives(REDIS_DROPIN)
    assert set(dropin) == {"Service"}
    assert {key for key, _ in dropin["Service"]} == {"ExecStart"}
    cleared, command = values(dropin, "Service", "ExecStart")
    assert cleared == ""
    argv = command_line(command)
    assert argv[:2] == ["/usr/bin/redis-server", "/etc/redis/redis.conf"]
    assert option_pairs(argv) == {
        "supervised": "systemd",
        "daemonize": "no",
        "appendonly": "yes",
        "appendfsync": "everysec",
        "maxmemory-policy": "noeviction",
        "unixsocket": REDIS_SOCKET,
        "unixsocketperm": "770",
    }


def test_the_dropin_keeps_debians_command_line_in_front():
    debian = debian_redis_unit()
    if debian is None:
        pytest.skip("Debian's redis-server unit is not installed: install `redis-server`")
    (debian_command,) = values(directives(debian), "Service", "ExecStart")
    debian_argv = command_line(debian_command)
    ours = command_line(values(directives(REDIS_DROPIN), "Service", "ExecStart")[-1])
    assert ours[: len(debian_argv)] == debian_argv


def test_the_env_examples_are_valid_settings_that_agree_with_the_units():
    panel, agent = env_file(PANEL_ENV), env_file(AGENT_ENV)
    settings = PanelSettings.from_env(panel)
    agent_settings = AgentSettings.from_env(agent)
    for common in (settings.common, agent_settings.common):
        assert common.redis_url == f"unix://{REDIS_SOCKET}"
        assert common.hmac_keys_file == Path("/etc/provision/hmac.keys")
        assert common.data_dir == Path("/var/lib/provision")
    assert settings.host == "127.0.0.1"
    assert settings.cookie_secure
    # The panel's host runs an agent too: the panel's default target is that agent's.
    assert settings.target == agent_settings.target
    assert agent_settings.agent_id == agent["PROV_AGENT_ID"]


def test_every_variable_the_env_examples_name_is_one_the_program_reads():
    # The settings, and the two commands' own options (PROV_LOG_LEVEL is a click envvar).
    sources = ("core/runtime/settings.py", "panel/cli/serve.py", "agent/cli.py")
    read = "".join((REPO / source).read_text(encoding="utf-8") for source in sources)
    for path in (PANEL_ENV, AGENT_ENV):
        names = set(env_file(path)) | commented_names(path)
        assert names, path.name
        assert {name for name in names if f'"{name}"' not in read} == set(), path.name


# --- Debian's redis-server with the drop-in's arguments -----------------------------------


def test_debians_redis_server_accepts_the_dropin_arguments():
    argv = command_line(values(directives(REDIS_DROPIN), "Service", "ExecStart")[-1])
    binary = Path(argv[0])
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} not found: install Debian's `redis-server` package")
    options = option_pairs(argv)
    del options["supervised"]  # no systemd here to notify
    # A short private folder: a Unix socket's path must stay under about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="prov-dropin-") as folder:
        socket_path = Path(folder) / "redis.sock"
        options["unixsocket"] = str(socket_path)
        # Not /etc/redis/redis.conf (root's only, and it names the system's folders): the
        # drop-in's options alone, with this test's own folder and no TCP port.
        options |= {"port": "0", "dir": folder, "pidfile": f"{folder}/redis.pid"}
        command = [str(binary)]
        for name, setting in options.items():
            command += [f"--{name}", setting]
        log_path = Path(folder) / "redis.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            client = wait_for_redis(process, socket_path, log_path)
            try:
                config = {
                    name: client.config_get(name)[name]
                    for name in ("appendonly", "appendfsync", "maxmemory-policy", "unixsocketperm")
                }
            finally:
                client.close()
            assert config == {
                "appendonly": "yes",
                "appendfsync": "everysec",
                "maxmemory-policy": "noeviction",
                "unixsocketperm": "770",
            }
            assert stat.S_IMODE(socket_path.stat().st_mode) == 0o770
        finally:
            stop(process)


def wait_for_redis(
    process: subprocess.Popen[bytes], socket_path: Path, log_path: Path
) -> redis.Redis:
    """A client once the server answers PING on its socket; fails with its log otherwise."""
    deadline = time.monotonic() + 15
    while True:
        code = process.poll()
        if code is not None:
            log = log_path.read_text(encoding="utf-8", errors="replace")
            pytest.fail(f"redis-server refused the drop-in's arguments (exit {code}):\n{log}")
        if socket_path.is_socket():
            client = redis.Redis(unix_socket_path=str(socket_path), decode_responses=True)
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError):
                if client.ping():
                    return client
            client.close()
        if time.monotonic() > deadline:
            log = log_path.read_text(encoding="utf-8", errors="replace")
            pytest.fail(f"redis-server did not answer within 15 s:\n{log}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s; the process is always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
