"""`provision keys`: manage the HMAC key ring file (docs/architecture.md §7, Keys).

`provision keys new` appends a fresh key; the new key signs from then on and every older key
still verifies, so keys rotate without downtime. The secret is written to the file only: the
command prints the new key id alone on standard output, so `kid=$(provision keys new)` works,
and its notes go to standard error.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from core.errors import KeyRingError, SettingsError
from core.keyring import append_new_key, keyfile_mode_problem
from core.runtime.settings import CommonSettings

DEFAULT_KEYS_FILE_NAME = "hmac.keys"
DATA_DIR_MODE = 0o700


def resolve_keys_file(option: Path | None, settings: CommonSettings) -> tuple[Path, bool]:
    """The key file to use: `--file`, else PROV_HMAC_KEYS_FILE, else the data folder's.

    The flag says whether the path is the data folder default, whose folder may be created.
    """
    if option is not None:
        return option, False
    if settings.hmac_keys_file is not None:
        return settings.hmac_keys_file, False
    return settings.data_dir / DEFAULT_KEYS_FILE_NAME, True


@click.group("keys")
def keys() -> None:
    """Manage the HMAC key ring that signs and verifies jobs."""


@keys.command("new")
@click.option(
    "--file",
    "file_",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Key file to append to (default: PROV_HMAC_KEYS_FILE, else <PROV_DATA_DIR>/hmac.keys).",
)
def new(file_: Path | None) -> None:
    """Append a fresh signing key to the key file and print its key id."""
    # An entry point: the one place that reads os.environ.
    try:
        settings = CommonSettings.from_env(os.environ)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    path, is_default = resolve_keys_file(file_, settings)
    if is_default:
        # The data folder also holds Redis data and the CLI token: owner only.
        try:
            settings.data_dir.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
        except OSError as error:
            raise click.ClickException(
                f"cannot create the data folder {settings.data_dir}: {error.strerror}"
            ) from None
    try:
        kid = append_new_key(path)
    except KeyRingError as error:
        raise click.ClickException(str(error)) from None
    click.echo(kid)
    click.echo(f"added key {kid} to {path}; it signs new jobs from now on", err=True)
    problem = keyfile_mode_problem(path)
    if problem is not None:
        click.echo(f"warning: {problem}", err=True)
