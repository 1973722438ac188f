"""One ``enable_auditing`` call's configuration, and its per-mapper plans."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.orm import Mapper

from sessiontrace.audit.plan import TablePlan, build_plan, is_audited
from sessiontrace.audit.writer import Change, write_changes


@dataclass(slots=True)
class Auditor:
    """Where audit rows go and what they leave out; plans are built on first use per mapper."""

    audit_table: Table
    key: bytes | None
    exclude: Mapping[str, Collection[str]]
    mask: Mapping[str, Collection[str]]
    record_values_in_spans: bool
    _plans: dict[Mapper[Any], TablePlan | None] = field(default_factory=dict)

    def plan_for(self, mapper: Mapper[Any]) -> TablePlan | None:
        """The plan for ``mapper``, or ``None`` if its class is not ``Audited``."""
        try:
            return self._plans[mapper]
        except KeyError:
            plan = build_plan(mapper, self.exclude, self.mask) if is_audited(mapper.class_) else None
            self._plans[mapper] = plan
            return plan

    def write(self, connection: Connection, changes: Iterable[Change], timestamp: datetime | None = None) -> None:
        write_changes(
            connection,
            changes,
            audit_table=self.audit_table,
            key=self.key,
            source="orm",
            record_values_in_spans=self.record_values_in_spans,
            timestamp=timestamp,
        )
