"""Database changes, audited: session columns on business tables, an append-only hash-chained
audit log written in the same transaction as the change, span events, verify and revert.

Two capture modes (see the README's table of which write paths each covers): ORM listeners
(SQLAlchemy, any database) and PostgreSQL triggers (also raw SQL and other clients).
"""

from __future__ import annotations

from sessiontrace.audit.checkpoint import load_checkpoints, write_checkpoint
from sessiontrace.audit.encoding import MASKED, canonical_json, decode_value, encode_value
from sessiontrace.audit.errors import AuditEncodingError, AuditError, AuditSetupError
from sessiontrace.audit.listeners import enable_auditing
from sessiontrace.audit.mixin import AUDITED_COLUMNS, Audited
from sessiontrace.audit.revert import RevertPlan, RevertRefusedError, SessionNotFoundError, revert_session
from sessiontrace.audit.schema import audit_log_table
from sessiontrace.audit.verify import NotChainedError, VerifyReport, verify
from sessiontrace.audit.writer import Change, write_changes

__all__ = [
    "AUDITED_COLUMNS",
    "MASKED",
    "AuditEncodingError",
    "AuditError",
    "AuditSetupError",
    "Audited",
    "Change",
    "NotChainedError",
    "RevertPlan",
    "RevertRefusedError",
    "SessionNotFoundError",
    "VerifyReport",
    "audit_log_table",
    "canonical_json",
    "decode_value",
    "enable_auditing",
    "encode_value",
    "load_checkpoints",
    "revert_session",
    "verify",
    "write_changes",
    "write_checkpoint",
]
