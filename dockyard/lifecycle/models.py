"""Tables of the lifecycle room (recycle bin, purge schedules, garbage-collection runs)."""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401 - the room's tables are added below

from dockyard.db import metadata  # noqa: F401
