"""`provision keys new`: where the key file goes, its mode, and that no secret is printed."""

from __future__ import annotations

import os
import stat
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.cli.keys import keys
from core.cli.root import ENTRY_POINT_GROUP
from core.keyring import load_keyring


@pytest.fixture
def runner():
    return CliRunner()


def run_new(runner: CliRunner, env: dict[str, str], *args: str):
    # Only the PROV_* variables under test: the caller's own environment must not leak in.
    clean = {name: None for name in os.environ if name.startswith("PROV_")}
    return runner.invoke(keys, ["new", *args], env={**clean, **env})


def secrets_in(path: Path) -> list[str]:
    return [line.partition(":")[2] for line in path.read_text().splitlines() if line]


def test_keys_new_creates_a_0600_file_in_the_data_folder_and_prints_the_kid(runner, tmp_path):
    data_dir = tmp_path / "data"
    result = run_new(runner, {"PROV_DATA_DIR": str(data_dir)})
    assert result.exit_code == 0, result.output
    path = data_dir / "hmac.keys"
    assert result.stdout == "k1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0
    assert load_keyring(path).signing_kid == "k1"


def test_each_new_key_gets_the_next_kid_and_the_newest_signs(runner, tmp_path):
    env = {"PROV_DATA_DIR": str(tmp_path)}
    kids = [run_new(runner, env).stdout.strip() for _ in range(3)]
    assert kids == ["k1", "k2", "k3"]
    ring = load_keyring(tmp_path / "hmac.keys")
    assert list(ring.keys) == kids
    assert ring.signing_kid == "k3"


def test_the_secret_is_never_printed(runner, tmp_path):
    result = run_new(runner, {"PROV_DATA_DIR": str(tmp_path)})
    (secret,) = secrets_in(tmp_path / "hmac.keys")
    assert secret not in result.stdout
    assert secret not in result.stderr
    assert secret[:12] not in result.output


def test_the_file_option_wins_over_the_environment(runner, tmp_path):
    chosen = tmp_path / "chosen.keys"
    from_env = tmp_path / "env.keys"
    result = run_new(
        runner,
        {"PROV_HMAC_KEYS_FILE": str(from_env), "PROV_DATA_DIR": str(tmp_path / "d")},
        "--file",
        str(chosen),
    )
    assert result.exit_code == 0, result.output
    assert chosen.exists()
    assert not from_env.exists()
    assert not (tmp_path / "d").exists()


def test_the_keys_file_variable_wins_over_the_data_folder(runner, tmp_path):
    from_env = tmp_path / "env.keys"
    result = run_new(
        runner, {"PROV_HMAC_KEYS_FILE": str(from_env), "PROV_DATA_DIR": str(tmp_path / "d")}
    )
    assert result.exit_code == 0, result.output
    assert load_keyring(from_env).signing_kid == "k1"
    assert not (tmp_path / "d").exists()


def test_an_existing_file_open_to_others_is_kept_but_warned_about(runner, tmp_path):
    path = tmp_path / "hmac.keys"
    assert run_new(runner, {}, "--file", str(path)).exit_code == 0
    os.chmod(path, 0o644)
    result = run_new(runner, {}, "--file", str(path))
    assert result.exit_code == 0, result.output
    assert result.stdout == "k2\n"
    assert "warning" in result.stderr
    assert "0644" in result.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_private_file_gets_no_warning(runner, tmp_path):
    result = run_new(runner, {}, "--file", str(tmp_path / "hmac.keys"))
    assert "warning" not in result.stderr


def test_a_broken_key_file_is_an_error_and_is_left_alone(runner, tmp_path):
    path = tmp_path / "hmac.keys"
    path.write_text("k1:not-base64-at-all\n")
    result = run_new(runner, {}, "--file", str(path))
    assert result.exit_code != 0
    assert "line 1" in result.stderr
    assert "not-base64-at-all" not in result.output
    assert path.read_text() == "k1:not-base64-at-all\n"


def test_a_bad_setting_is_reported_by_name(runner, tmp_path):
    result = run_new(runner, {"PROV_JOB_TTL_S": "soon", "PROV_DATA_DIR": str(tmp_path)})
    assert result.exit_code != 0
    assert "PROV_JOB_TTL_S" in result.stderr


def test_keys_is_contributed_to_provision_through_its_entry_point():
    (entry,) = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == "keys"]
    assert entry.load() is keys
