"""Clients for other registries: import and the pull-through cache read through these."""
