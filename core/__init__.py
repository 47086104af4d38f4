"""Shared core of the provisioning panel: what the panel and the agent agree on.

    (top level)  pure modules: errors, keys, reasons, retry, signing, sealing, keyring,
                 validation, strict_json, stream_ids, text; they open no socket and start no
                 process (tests/unit/test_architecture.py checks it)
    manifest/    the manifest's model and its strict parser (pure too)
    runtime/     the plumbing: settings, the Redis connection and launcher, logging, key file,
                 catalogue
    cli/         the `provision` root command and core's own subcommands (apps, keys)

docs/architecture.md maps every room of the project.
"""

__version__ = "0.1.0"
