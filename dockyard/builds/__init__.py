"""ACR Tasks: quick builds and runs, tasks with commit, base-image and timer triggers, multi-step YAML.

The pure parts (``spec``, ``variables``, ``taskfile``, ``dockerfile``, ``buildcmd``, ``patch``) know
nothing of HTTP or the database; ``executor`` runs a ``TaskSpec`` with a ``Builder`` (``buildah``)
in a prepared context (``contexts``); the room (``models``, ``services``, ``jobs``, ``routes``,
``triggers``) stores tasks and runs and runs them as jobs of the job runtime.
"""
