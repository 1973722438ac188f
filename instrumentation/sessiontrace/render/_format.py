"""Small, shared text formatting for renderers."""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.text import Text

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
    """A value on one line, cut at ``limit`` characters, its control characters escaped."""
    text = value if isinstance(value, str) else repr(value)
    text = escape(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Control characters (C0, DEL, C1), the line/paragraph separators and the bidirectional overrides:
# from stored (untrusted) values they would drive the terminal (clear it, retitle it, hide links)
# or disguise what is shown.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def escape(text: str) -> str:
    """``text`` with its control characters as visible escapes (``\\x1b``, ``\\u202e``)."""
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: Text) -> Text:
    """``text`` (a line of stored values) with its control characters escaped, styles kept."""
    plain = text.plain
    if not _CONTROL.search(plain):
        return text
    # where each character of ``plain`` starts in the escaped text, and where it ends
    starts: list[int] = []
    pieces: list[str] = []
    at = 0
    for char in plain:
        starts.append(at)
        piece = escape(char)
        pieces.append(piece)
        at += len(piece)
    starts.append(at)
    escaped = Text("".join(pieces), style=text.style, justify=text.justify, no_wrap=text.no_wrap, end=text.end)
    for span in text.spans:
        escaped.stylize(span.style, starts[span.start], starts[span.end])
    return escaped
