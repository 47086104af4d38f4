"""The plumbing every process shares: where things are, and how to reach them.

    settings        one frozen dataclass per process kind, read from `PROV_*` variables;
                    `redis_url_or_local`, the one resolver of the Redis every command uses
    redis_conn      clients from a URL, the durability check (append-only, no eviction)
    redis_launcher  the local Redis of `provision up` and of the tests (a real redis-server)
    logging_setup   structlog: JSON lines in production, readable lines on a terminal
    keyring_file    the key ring file, re-read when it changes (rotation without restart)
    catalogue       the apps of an installers folder, broken ones listed with their problems

Unlike the pure modules of `core/`, these read files, the environment and sockets.
"""
