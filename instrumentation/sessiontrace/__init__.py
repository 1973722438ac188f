"""sessiontrace: one session ID from the click to the commit.

Mint a session where an activity starts (``session()``), call ``configure()`` once at startup,
and every span and log of that activity, in this process and the ones it calls, carries the id.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sessiontrace._version import __version__

if TYPE_CHECKING:
    from sessiontrace.config import ConfigError, Configuration, configure
    from sessiontrace.context import Session, SessionScope, current_session, new_session_id, session
    from sessiontrace.policy import InboundPolicy, OutboundPolicy
    from sessiontrace.processors import SessionLogRecordProcessor, SessionSpanProcessor
    from sessiontrace.propagation import SessionPropagator, extract, inject
    from sessiontrace.redaction import RedactingLogRecordProcessor, RedactingSpanProcessor, Redactor

# Loaded on first use, so that `sessiontrace --help` (and anything else that imports a
# submodule) does not pay for the OpenTelemetry SDK.
_LAZY = {
    "ConfigError": "sessiontrace.config",
    "Configuration": "sessiontrace.config",
    "configure": "sessiontrace.config",
    "Session": "sessiontrace.context",
    "SessionScope": "sessiontrace.context",
    "current_session": "sessiontrace.context",
    "new_session_id": "sessiontrace.context",
    "session": "sessiontrace.context",
    "InboundPolicy": "sessiontrace.policy",
    "OutboundPolicy": "sessiontrace.policy",
    "SessionLogRecordProcessor": "sessiontrace.processors",
    "SessionSpanProcessor": "sessiontrace.processors",
    "SessionPropagator": "sessiontrace.propagation",
    "extract": "sessiontrace.propagation",
    "inject": "sessiontrace.propagation",
    "RedactingLogRecordProcessor": "sessiontrace.redaction",
    "RedactingSpanProcessor": "sessiontrace.redaction",
    "Redactor": "sessiontrace.redaction",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sessiontrace' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ConfigError",
    "Configuration",
    "InboundPolicy",
    "OutboundPolicy",
    "RedactingLogRecordProcessor",
    "RedactingSpanProcessor",
    "Redactor",
    "Session",
    "SessionLogRecordProcessor",
    "SessionPropagator",
    "SessionScope",
    "SessionSpanProcessor",
    "__version__",
    "configure",
    "current_session",
    "extract",
    "inject",
    "new_session_id",
    "session",
]
