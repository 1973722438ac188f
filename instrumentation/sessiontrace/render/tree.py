"""The session path as a time-ordered tree for the terminal (``rich``).

One line per span: ``name  [service]  +offset  duration``, offsets from the session's first span.
Failures are red with their message; the first failure is marked, since the spans above it
usually only repeat it. Events follow their span with a few attributes each: readable, not a dump.
``rich`` drops colour for ``NO_COLOR`` and non-terminals by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from sessiontrace import semconv
from sessiontrace.path import PathSpan, SessionPath
from sessiontrace.render import _format
from sessiontrace.render._format import ms, short, timestamp

MAX_EVENT_ATTRIBUTES = 4
MAX_EVENTS = 10
# Stamped on everything in the session: repeating them under each event is noise.
_SESSION_KEYS = frozenset(semconv.SESSION_ATTRIBUTES)


def print_path(path: SessionPath, *, console: Console | None = None) -> None:
    """Print ``path`` as a tree to ``console`` (default: stdout)."""
    (console or _format.console()).print(render_tree(path))


def render_tree(path: SessionPath) -> Group:
    """The header and the tree, as one renderable."""
    return Group(_header(path), _tree(path))


def _header(path: SessionPath) -> Text:
    text = Text()
    text.append("session ", style="bold")
    text.append(path.session_id, style="bold cyan")
    people = [
        ("user", path.user_id or "-"),
        ("trigger", path.trigger_source or "-"),
        ("services", ", ".join(path.services) or "-"),
    ]
    sizes = [
        ("spans", str(path.span_count)),
        ("traces", str(len(path.traces))),
        ("duration", ms(path.duration_ns)),
    ]
    if path.span_count:
        sizes.append(("started", timestamp(path.start_ns)))
    for facts in (people, sizes):
        text.append("\n")
        text.append("  ".join(f"{label} {value}" for label, value in facts), style="dim")
    errors = path.error_count
    if errors:
        text.append(f"  errors {errors}", style="bold red")
    return text


def _tree(path: SessionPath) -> Tree:
    origin = path.start_ns
    failure = path.first_failure()
    root = Tree(Text("traces", style="dim"), guide_style="dim")
    for trace in path.traces:
        branch = root.add(
            Text(f"trace {trace.trace_id}  ({trace.span_count} spans)", style="dim"),
        )
        for span in trace.roots:
            _add_span(branch, span, origin, failure)
    return root


def _add_span(parent: Tree, span: PathSpan, origin: int, failure: PathSpan | None) -> None:
    node = parent.add(_span_line(span, origin, is_first_failure=span is failure))
    for event in span.events[:MAX_EVENTS]:
        node.add(_event_line(event.name, event.time_ns - origin, event.attributes))
    if len(span.events) > MAX_EVENTS:
        node.add(Text(f"… {len(span.events) - MAX_EVENTS} more events", style="dim"))
    for child in span.children:
        _add_span(node, child, origin, failure)


def _span_line(span: PathSpan, origin: int, *, is_first_failure: bool) -> Text:
    line = Text()
    line.append(span.name, style="bold red" if span.is_error else "bold")
    if span.service_name:
        line.append(f"  [{span.service_name}]", style="cyan")
    line.append(f"  +{ms(span.start_ns - origin)}", style="dim")
    line.append(f"  {ms(span.duration_ns)}" if span.end_ns is not None else "  (not ended)")
    if span.orphan:
        line.append("  (parent not stored)", style="dim italic")
    if span.is_error:
        line.append("  ✗ " + short(span.status_message or "error", 120), style="red")
    if is_first_failure:
        line.append("  ⚠ first failure", style="bold yellow")
    return line


def _event_line(name: str, offset_ns: int, attributes: Mapping[str, Any]) -> Text:
    line = Text()
    line.append("• ", style="dim")
    line.append(name, style="magenta")
    line.append(f"  +{ms(offset_ns)}", style="dim")
    shown = [(k, v) for k, v in attributes.items() if k not in _SESSION_KEYS]
    if shown:
        pairs = ", ".join(f"{k}={short(v)}" for k, v in shown[:MAX_EVENT_ATTRIBUTES])
        more = len(shown) - MAX_EVENT_ATTRIBUTES
        line.append("  " + pairs + (f", +{more} more" if more > 0 else ""), style="dim")
    return line
