"""`provision apps list|check`: the catalogue from the command line (docs/architecture.md §2,
§7)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from core.cli import script_lint
from core.errors import SettingsError
from core.runtime.catalogue import AppEntry, Catalogue
from core.runtime.settings import CommonSettings

_INSTALLERS_DIR_OPTION = click.option(
    "--installers-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of app folders (default: PROV_INSTALLERS_DIR, else the repo's installers/).",
)


def _installers_dir(override: Path | None) -> Path:
    if override is not None:
        return override
    try:
        # os.environ is read here, in the command, and nowhere deeper (STYLE: settings).
        return CommonSettings.from_env(os.environ).installers_dir
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def _existing_dir(override: Path | None) -> Path:
    installers_dir = _installers_dir(override)
    if not installers_dir.is_dir():
        raise click.ClickException(f"installers folder {installers_dir} does not exist")
    return installers_dir


def _load(override: Path | None) -> Catalogue:
    return Catalogue.load(_existing_dir(override))


def _as_json(entry: AppEntry) -> dict[str, object]:
    manifest = entry.manifest
    return {
        "id": entry.app_id,
        "name": manifest.name if manifest else None,
        "version": manifest.version if manifest else None,
        "category": manifest.category if manifest else None,
        "valid": entry.valid,
        "fingerprint": entry.fingerprint,
        "problems": list(entry.problems),
    }


def _status(entry: AppEntry) -> str:
    if entry.valid:
        return "valid"
    more = f" (+{len(entry.problems) - 1} more)" if len(entry.problems) > 1 else ""
    first = entry.problems[0] if entry.problems else "unknown problem"
    return f"invalid: {first}{more}"


@click.group()
def apps() -> None:
    """Inspect the app catalogue."""


@apps.command("list")
@_INSTALLERS_DIR_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_apps(installers_dir: Path | None, as_json: bool) -> None:
    """List every app: id, name, version, category and whether it is valid."""
    catalogue = _load(installers_dir)
    if as_json:
        click.echo(json.dumps([_as_json(entry) for entry in catalogue.apps], indent=2))
        return
    header = ("ID", "NAME", "VERSION", "CATEGORY", "STATUS")
    rows = [
        (
            entry.app_id,
            entry.manifest.name if entry.manifest else "-",
            entry.manifest.version if entry.manifest else "-",
            entry.manifest.category if entry.manifest else "-",
            _status(entry),
        )
        for entry in catalogue.apps
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        click.echo("  ".join([*cells, row[-1]]))


@apps.command("check")
@_INSTALLERS_DIR_OPTION
def check_apps(installers_dir: Path | None) -> None:
    """Print every problem of every app and of the shared library; exit 1 if there is any.

    Besides the manifest, each app's scripts are linted: shellcheck, no xtrace, every input
    used and every variable read declared, and safe file modes (`core.cli.script_lint`).
    """
    root = _existing_dir(installers_dir)
    catalogue = Catalogue.load(root)
    shellcheck = script_lint.find_shellcheck()
    library_vars = script_lint.library_variables(root)
    failing = 0
    for entry in catalogue.apps:
        problems = list(entry.problems)
        if not entry.valid and not problems:
            problems.append("unknown problem")
        if entry.manifest is not None:
            linted = script_lint.app_script_problems(
                entry.folder, entry.manifest, library_vars=library_vars, shellcheck=shellcheck
            )
            # The catalogue and the lint may both see an unsafe file mode: say it once.
            problems.extend(p for p in linted if not any(c.endswith(p) for c in problems))
        if problems:
            failing += 1
            click.echo(f"{entry.app_id}: {'invalid' if not entry.valid else 'fails the checks'}")
            for problem in problems:
                click.echo(f"  - {entry.app_id}: {problem}")
    library = script_lint.library_problems(root, shellcheck=shellcheck)
    if library:
        click.echo(f"{script_lint.LIBRARY_DIR}: fails the checks")
        for problem in library:
            click.echo(f"  - {script_lint.LIBRARY_DIR}: {problem}")
    if failing or library:
        click.echo(f"{failing} of {len(catalogue.apps)} apps invalid")
        if library:
            click.echo(f"the shared library {script_lint.LIBRARY_DIR} has {len(library)} problems")
        raise SystemExit(1)
    click.echo(f"{len(catalogue.apps)} apps OK")
