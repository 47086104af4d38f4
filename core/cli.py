"""The root of the `provision` command.

Each part (core, panel, agent) contributes its subcommands through the `provision.commands`
entry-point group, so this module never imports the panel or the agent.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from core import __version__

ENTRY_POINT_GROUP = "provision.commands"


class PluginGroup(click.Group):
    """A click group that loads its subcommands from entry points on first use."""

    def _load_plugins(self) -> None:
        if getattr(self, "_plugins_loaded", False):
            return
        self._plugins_loaded = True
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            command = entry.load()
            if not isinstance(command, click.Command):
                raise click.ClickException(f"entry point {entry.name!r} is not a click command")
            self.add_command(command, entry.name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """List every contributed subcommand."""
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Find a contributed subcommand by name."""
        self._load_plugins()
        return super().get_command(ctx, cmd_name)


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="provision")
def main() -> None:
    """Self-hosted app provisioning: panel, agent, and the tools around them."""
