"""The sessions listing as a terminal table (``rich``)."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sessiontrace.records import SessionSummary
from sessiontrace.render import _format
from sessiontrace.render._format import escape_text, ms, short, timestamp

# Below this width the descriptive columns are dropped rather than squeezed to a letter each.
WIDE = 130


def sessions_table(sessions: Sequence[SessionSummary], *, width: int = WIDE) -> Table:
    wide = width >= WIDE
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # The id must stay whole: it is what one copies into `sessiontrace path`.
    table.add_column("session id", style="cyan", no_wrap=True, min_width=36)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("spans", justify="right")
    table.add_column("errors", justify="right")
    table.add_column("user", overflow="fold")
    if wide:
        table.add_column("trigger")
        table.add_column("first span", overflow="fold")
        table.add_column("services", overflow="fold")
    for s in sessions:
        started = timestamp(s.first_start_ns)
        # Text, not markup strings: stored values are untrusted and may contain "[...]" (or control
        # characters, escaped).
        row = [
            Text(s.session_id),
            Text(started if wide else started[11:19]),
            Text(ms(s.duration_ns)),
            Text(str(s.span_count)),
            Text(str(s.error_count), style="red" if s.error_count else ""),
            Text(short(s.user_id or "-", 32)),
        ]
        if wide:
            row += [
                Text(s.trigger_source or "-"),
                Text(short(s.root_name or "-", 40)),
                Text(", ".join(s.services) or "-"),
            ]
        table.add_row(*(escape_text(cell) for cell in row))
    return table


def print_sessions(sessions: Sequence[SessionSummary], *, console: Console | None = None) -> None:
    """Print the listing, newest first as given; says so plainly when there is nothing."""
    console = console or _format.console()
    if not sessions:
        console.print("no sessions in the store yet")
        return
    console.print(sessions_table(sessions, width=console.width))
