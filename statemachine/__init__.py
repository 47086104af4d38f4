"""The job state machine, the event model with its hash chain, the Redis event store, replay."""
