"""Redaction: personal data and secrets are removed from every span and log record before export.

``configure()`` turns it on by default (``SESSIONTRACE_REDACT``): a ``RedactingSpanProcessor``
first in the provider's list rewrites each ending span, ours and third-party, before any
exporter sees it. Built-in detectors (``DETECTORS``) replace what they find with a typed marker
(``[REDACTED:email]``); deny keys replace a whole value; allow keys (``session.id`` among them)
are never touched; callbacks add your own rules; long values are capped.
"""

from __future__ import annotations

from sessiontrace.redaction._detectors import DETECTORS, MARKER_FORMAT, iban_checksum, luhn
from sessiontrace.redaction._processors import (
    RedactingLogRecordProcessor,
    RedactingSpanProcessor,
    add_span_processor_first,
    install_log_redaction,
    install_redaction,
    redact_span,
)
from sessiontrace.redaction._redactor import (
    BODY_KEY,
    DEFAULT_ALLOW_KEYS,
    DEFAULT_DENY_KEYS,
    DENIED,
    EVENT_NAME_KEY,
    FAILED,
    MAX_VALUE_CHARS,
    NAME_KEY,
    STATUS_KEY,
    Callback,
    Redactor,
)

__all__ = [
    "BODY_KEY",
    "DEFAULT_ALLOW_KEYS",
    "DEFAULT_DENY_KEYS",
    "DENIED",
    "DETECTORS",
    "EVENT_NAME_KEY",
    "FAILED",
    "MARKER_FORMAT",
    "MAX_VALUE_CHARS",
    "NAME_KEY",
    "STATUS_KEY",
    "Callback",
    "RedactingLogRecordProcessor",
    "RedactingSpanProcessor",
    "Redactor",
    "add_span_processor_first",
    "iban_checksum",
    "install_log_redaction",
    "install_redaction",
    "luhn",
    "redact_span",
]
