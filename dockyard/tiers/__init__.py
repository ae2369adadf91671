"""Service tiers (SKUs), their limits, request-rate limits and the storage quota."""
