"""What can go wrong when auditing: each error names the table (and column) it is about."""

from __future__ import annotations


class AuditError(Exception):
    """Base class: a change could not be audited, so it was not made."""


class AuditSetupError(AuditError):
    """``enable_auditing`` was given something it cannot audit (e.g. a table without a primary key)."""


class AuditEncodingError(AuditError):
    """A value cannot be recorded losslessly as JSON; the message names ``table.column``."""
