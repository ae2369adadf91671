"""Webhooks: ACR-compatible notifications with durable, retried, logged delivery."""
