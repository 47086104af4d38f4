"""The audit: every job rebuilt from its events and every record checked, offline too.

    auditor         one pass over `prov:events`: replay, chain, macs, snapshots, both streams
    history         the replay of a history in global order, job by job as events go by
    parallel        the same audit split over processes by spans of the global stream
    export          a signed JSON-lines export and its offline verification
    archive         moving old history out of Redis, only after its export verifies
    archive_record  the signed record an archive leaves behind
    cli             `provision audit replay|verify|export|archive`

It reads what the machine and the store wrote; nothing below it imports it.
"""
