"""Small, shared text formatting for renderers."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from rich.console import Console

MAX_VALUE = 60
PIPE_WIDTH = 160


def console() -> Console:
    """A stdout console. Piped output gets a wide page instead of rich's 80 columns, so lines are
    not wrapped mid-span for ``grep`` and files (``COLUMNS`` still wins when set)."""
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(width=PIPE_WIDTH)
    return out


def ms(ns: int) -> str:
    """Nanoseconds as milliseconds: 3 significant decimals for short spans, none for long ones."""
    value = ns / 1e6
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 1:
        return f"{value:.1f} ms"
    return f"{value:.3f} ms"


def timestamp(ns: int) -> str:
    """A local wall-clock time, to the millisecond."""
    moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def short(value: Any, limit: int = MAX_VALUE) -> str:
    """A value on one line, cut at ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
