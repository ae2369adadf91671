"""``dockyard import``: copy images from another registry (as ``az acr import``)."""
