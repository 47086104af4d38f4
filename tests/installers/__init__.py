"""Installer tests: the shell library (test_lib.py) and real installs through the agent."""
