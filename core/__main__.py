"""`python -m core ...` runs the `provision` command (used to start child processes)."""

from core.cli.root import main

main()
