"""Image lifecycle: locks and immutable tags live in the registry room; this room holds soft delete
(the recycle bin), retention of untagged manifests, purge, online garbage collection and usage."""
