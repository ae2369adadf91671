"""How other parts of the lifecycle room tell garbage collection what it must keep."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

#: A source of blob digests that must survive garbage collection although no manifest in the
#: ``manifests`` table references them (e.g. the recycle bin's soft-deleted manifests). It returns
#: a one-column SELECT of digests, which the collector runs inside its marking transaction.
KeptBlobs = Callable[[], sa.Select]
