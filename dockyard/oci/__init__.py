"""The OCI specifications, pure: digests, names, media types, manifests, error codes.

Nothing in this package imports the rest of Dockyard or does I/O.
"""
