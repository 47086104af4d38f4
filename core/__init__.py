"""Shared core of the provisioning panel: what the panel and the agent agree on.

The pure modules (manifest, validation, signing, sealing, retry, keys, errors) open no
socket and start no process; the plumbing (settings, logging, Redis connection, the local
Redis launcher, the CLI root) lives in clearly separate modules.
"""

__version__ = "0.1.0"
