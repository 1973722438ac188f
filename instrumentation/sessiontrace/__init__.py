"""sessiontrace: one session ID from the click to the commit.

Mint a session where an activity starts (``session()``), call ``configure()`` once at startup,
and every span and log of that activity, in this process and the ones it calls, carries the id.
"""

from __future__ import annotations

from sessiontrace._version import __version__
from sessiontrace.config import ConfigError, Configuration, configure
from sessiontrace.context import Session, SessionScope, current_session, new_session_id, session
from sessiontrace.policy import InboundPolicy, OutboundPolicy
from sessiontrace.processors import SessionLogRecordProcessor, SessionSpanProcessor
from sessiontrace.propagation import SessionPropagator, extract, inject

__all__ = [
    "ConfigError",
    "Configuration",
    "InboundPolicy",
    "OutboundPolicy",
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
