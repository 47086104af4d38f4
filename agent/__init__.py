"""The agent daemon: takes a target's jobs from Redis, checks them, runs them, records them.

cli        `provision agent`
worker     the loop: reads, reclaim, slots, graceful stop, and the periodic duties
duties     the supervisor of those duties
queue      group reads with snapshots, lease renewal, requeue (their Lua in lua/)
processor  one entry from delivery to outcome (`Delivery`)
checks     the security layers; execution and sandbox, one run of an installer
steps      shielded writes of a job's steps, acknowledgements, dead letters
joblog, redaction, applock, metrics, metrics_server
"""
