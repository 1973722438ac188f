"""The columns audited business tables gain, and how a write fills them.

``Audited`` is a declarative mixin: ``class Claim(Audited, Base)``. Every write made through a
session class that ``enable_auditing`` was called on stamps the row with the current
``sessiontrace`` session (its id and user) and the time of the write: unit-of-work inserts and
updates, and ORM bulk ``update()`` statements (the columns are added to the SET clause).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column, validates

from sessiontrace import _values
from sessiontrace.context import current_session

AUDITED_COLUMNS = ("session_id", "changed_by_user_id", "change_timestamp")
"""The mixin's columns: stamped on every write, and not repeated in the audit log's values (the
audit row has its own session, user and timestamp)."""


class Audited:
    """Mixin for mapped classes whose changes are audited (see ``enable_auditing``)."""

    session_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False), nullable=True, default=None)
    changed_by_user_id: Mapped[str | None] = mapped_column(String(256), nullable=True, default=None)
    change_timestamp: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=None)

    @validates("session_id")
    def _validate_session_id(self, key: str, value: Any) -> str | None:
        # A hand-set id that is not a UUID would otherwise fail deep inside the driver (PostgreSQL)
        # or be stored as garbage (SQLite): fail here, naming the table.
        if value is None:
            return None
        return _values.session_id(value, f"{type(self).__name__}.session_id")


def stamp_values(moment: datetime) -> dict[str, Any]:
    """The mixin columns' values for a write at ``moment`` in the current session (nothing is
    overwritten with ``None`` outside a session except the timestamp, which is always set)."""
    current = current_session()
    if current is None:
        return {"change_timestamp": moment}
    return {"session_id": current.id, "changed_by_user_id": current.user_id, "change_timestamp": moment}
