"""Warnings that fire once per reason, so hostile traffic cannot flood the application's log."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("sessiontrace")

_seen: set[str] = set()
_lock = threading.Lock()


def warn_once(reason: str, message: str, *args: object) -> None:
    """Log ``message`` at WARNING the first time ``reason`` occurs in this process."""
    with _lock:
        if reason in _seen:
            return
        _seen.add(reason)
    logger.warning(message, *args)


def reset_warnings() -> None:
    """Forget which reasons were reported (tests use it to observe a warning again)."""
    with _lock:
        _seen.clear()
