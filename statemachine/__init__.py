"""The job state machine, its events and their store.

machine, events, snapshot  the graph (`JobState`, `Trigger`), the hash-chained, MACed
                           events, the snapshot as a fold of them (`JobSnapshot`)
store, lua/                every transition as one atomic Lua step
replay                     a job rebuilt from its events, tampering named
audit/                     the audit of the whole history, export and archive
integrations/              the event feed for other systems, metrics, webhooks
"""
