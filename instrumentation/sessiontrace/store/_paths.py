"""Where the embedded store lives by default, and where it falls back to."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

STORE_ENV = "SESSIONTRACE_STORE"
STORE_FILE = "spans.sqlite3"


def default_store_path() -> Path:
    """``$SESSIONTRACE_STORE``, else ``$XDG_DATA_HOME/sessiontrace/spans.sqlite3``
    (``XDG_DATA_HOME`` defaults to ``~/.local/share``)."""
    explicit = os.environ.get(STORE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    # The XDG spec says to ignore a relative XDG_DATA_HOME.
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "sessiontrace" / STORE_FILE


def fallback_store_path() -> Path:
    """A per-user store in the temp directory, used when the configured path is not writable."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f"sessiontrace-{uid}" / STORE_FILE
