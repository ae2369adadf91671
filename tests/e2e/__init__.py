"""End-to-end tests: a real `dockyard serve` driven by real clients (skopeo, podman, buildah, oras)."""
