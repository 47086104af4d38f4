"""What other systems consume: the event feed, its metrics, and the webhook forwarder.

    consumer        a consumer-group reader of `prov:events` for integrations
                    (at-least-once, resume after restart, takeover of a dead consumer)
    stream_metrics  queue depth, pending entries and group lag, for `/metrics`
    webhook/        events POSTed as signed webhooks, with dead letters and redrive

Reads the store's streams; knows nothing of the audit.
"""
