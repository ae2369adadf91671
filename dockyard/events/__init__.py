"""Events: the repository event log, written in the same transaction as the change (the outbox)."""
