"""Request-rate limits: token buckets per registry and per identity, shared across processes."""
