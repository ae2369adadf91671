"""The OCI data plane: uploads, blobs, manifests, tags, referrers, catalog."""
