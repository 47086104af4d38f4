"""The `provision` command: its root, and the subcommands that belong to core.

root         the click group; each part adds its own subcommands through the
             `provision.commands` entry points, so core never imports panel or agent
apps         `provision apps list|check`
script_lint  what `apps check` checks in each script (shellcheck, xtrace, inputs, modes)
keys         `provision keys new`
"""
