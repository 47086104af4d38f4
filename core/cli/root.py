"""The root of the `provision` command.

Each part (core, panel, agent) contributes its subcommands through the `provision.commands`
entry-point group, so this module never imports the panel or the agent.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

from core import __version__

ENTRY_POINT_GROUP = "provision.commands"


class PluginGroup(click.Group):
    """A click group whose subcommands come from entry points, each imported only when used.

    Importing lazily keeps `provision apps list` from loading the panel or the agent, and a
    broken part from breaking the commands of the others.
    """

    def _entries(self) -> dict[str, EntryPoint]:
        return {entry.name: entry for entry in entry_points(group=ENTRY_POINT_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every contributed subcommand's name."""
        return sorted({*super().list_commands(ctx), *self._entries()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import and return one contributed subcommand."""
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = self._entries().get(cmd_name)
        if entry is None:
            return None
        loaded = entry.load()
        if not isinstance(loaded, click.Command):
            raise click.ClickException(f"entry point {cmd_name!r} is not a click command")
        self.add_command(loaded, cmd_name)
        return loaded


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """Self-hosted app provisioning: panel, agent, and the tools around them."""
