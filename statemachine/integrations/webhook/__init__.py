"""The built-in webhook forwarder: `prov:events` to an HTTP endpoint, with dead letters.

    signature   the `X-Provision-Signature` scheme: sign, and `verify_signature` for receivers
    policy      pure decisions: which answers are delivered/retried/permanent, backoff delays
    options     the forwarder's settings, filter syntax, the secret file
    sender      one signed HTTP POST of one event (aiohttp)
    deadletter  the dead-letter and redrive streams (Redis, atomic moves)
    forwarder   the loop: read, deliver in order per job, retry, bury, acknowledge
    cli         `provision integrations webhook|dead|redrive`

Importing this package imports nothing else, so a receiver can use `signature` alone.
"""
