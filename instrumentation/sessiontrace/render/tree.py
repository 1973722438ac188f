"""The session path as a time-ordered tree for the terminal (``rich``).

One line per span: ``name  [service]  +offset  duration``, offsets from the session's first span,
then what matters about that kind of span: for an AI call its model (provider), confidence and
tokens (in→out); for a workflow run or step the statuses it went through (the last one is its
result); for a human review its decision and the call it judged. Failures are red with their
message; the first failure is marked, since the spans above it usually only repeat it. Events
follow their span with a few attributes each (status changes with a reason, and evaluations, in
words): readable, not a dump.
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
    names = {span.span_id: span.name for span in path.walk()}
    root = Tree(Text("traces", style="dim"), guide_style="dim")
    for trace in path.traces:
        branch = root.add(
            Text(f"trace {trace.trace_id}  ({trace.span_count} spans)", style="dim"),
        )
        for span in trace.roots:
            _add_span(branch, span, origin, failure, names)
    return root


def _add_span(parent: Tree, span: PathSpan, origin: int, failure: PathSpan | None, names: Mapping[str, str]) -> None:
    node = parent.add(_span_line(span, origin, is_first_failure=span is failure, names=names))
    # A status change without a reason says nothing the span line's status trail does not.
    events = [e for e in span.events if e.name != semconv.STATUS_CHANGE_EVENT or semconv.STATUS_REASON in e.attributes]
    for event in events[:MAX_EVENTS]:
        node.add(_event_line(event.name, event.time_ns - origin, event.attributes))
    if len(events) > MAX_EVENTS:
        node.add(Text(f"… {len(events) - MAX_EVENTS} more events", style="dim"))
    for child in span.children:
        _add_span(node, child, origin, failure, names)


def _span_line(span: PathSpan, origin: int, *, is_first_failure: bool, names: Mapping[str, str] | None = None) -> Text:
    line = Text()
    line.append(span.name, style="bold red" if span.is_error else "bold")
    if span.service_name:
        line.append(f"  [{span.service_name}]", style="cyan")
    line.append(f"  +{ms(span.start_ns - origin)}", style="dim")
    line.append(f"  {ms(span.duration_ns)}" if span.end_ns is not None else "  (not ended)")
    for text, style in _facts(span, names or {}):
        line.append("  " + text, style=style)
    if span.orphan:
        line.append("  (parent not stored)", style="dim italic")
    if span.is_error:
        line.append("  ✗ " + short(span.status_message or "error", 120), style="red")
    if is_first_failure:
        line.append("  ⚠ first failure", style="bold yellow")
    return line


def _facts(span: PathSpan, names: Mapping[str, str]) -> list[tuple[str, str]]:
    """What to say about an AI call, a workflow run or step, or a review, as (text, style)."""
    a = span.attributes
    facts: list[tuple[str, str]] = []
    if semconv.GEN_AI_OPERATION_NAME in a:
        model = a.get(semconv.GEN_AI_REQUEST_MODEL)
        answered = a.get(semconv.GEN_AI_RESPONSE_MODEL)
        if answered and answered != model:
            # A dated snapshot of the model asked for says both; anything else shows the switch.
            model = answered if model and str(answered).startswith(str(model)) else f"{model or '?'} → {answered}"
        provider = a.get(semconv.GEN_AI_PROVIDER_NAME)
        if model or provider:
            facts.append((f"model {short(model or '?')}" + (f" ({short(provider)})" if provider else ""), "blue"))
        confidence = _confidence(span)
        if confidence:
            facts.append((confidence, "bold yellow"))
        tokens_in, tokens_out = a.get(semconv.GEN_AI_USAGE_INPUT_TOKENS), a.get(semconv.GEN_AI_USAGE_OUTPUT_TOKENS)
        if tokens_in is not None or tokens_out is not None:
            facts.append((f"tokens {_or_dash(tokens_in)}→{_or_dash(tokens_out)}", "dim"))
    if semconv.GEN_AI_REVIEW_DECISION in a:
        decision = f"decision {a[semconv.GEN_AI_REVIEW_DECISION]}"
        if a.get(semconv.GEN_AI_REVIEWER):
            decision += f" by {short(a[semconv.GEN_AI_REVIEWER])}"
        facts.append((decision, "bold yellow"))
        for link in span.links:
            facts.append((f"reviews {names.get(link.span_id, link.span_id)}", "dim"))
    if semconv.WORKFLOW_NAME in a or semconv.STEP_NAME in a:
        trail = _status_trail(span)
        if trail:
            facts.append(("status " + " → ".join(trail), _STATUS_STYLE.get(trail[-1], "yellow")))
        result = a.get(semconv.STEP_RESULT if semconv.STEP_NAME in a else semconv.WORKFLOW_RESULT)
        if result and not (trail and _RESULTS.get(trail[-1]) == result):  # else the trail says it
            facts.append((f"result {result}", "green" if result == "success" else "yellow"))
        attempt = a.get(semconv.STEP_ATTEMPT)
        if isinstance(attempt, int) and attempt > 1:
            facts.append((f"attempt {attempt}", "yellow"))
    return facts


_STATUS_STYLE = {"succeeded": "green", "failed": "red", "cancelled": "red"}
_RESULTS = {"succeeded": "success", "failed": "failure", "cancelled": "cancellation"}


def _status_trail(span: PathSpan) -> list[str]:
    """The statuses a run or step went through (``running → waiting_for_human → succeeded``),
    from its status events; the ``pending`` every span starts in is left out. Without events,
    the last status the span recorded."""
    trail = [
        str(e.attributes.get(semconv.STATUS_TO))
        for e in span.events
        if e.name == semconv.STATUS_CHANGE_EVENT and e.attributes.get(semconv.STATUS_TO)
    ]
    if not trail and span.attributes.get(semconv.WORKFLOW_STATUS):
        trail = [str(span.attributes[semconv.WORKFLOW_STATUS])]
    return trail


def _confidence(span: PathSpan) -> str | None:
    """``confidence 0.83 (high)``: the span's confidence with the label of its latest evaluation."""
    score = span.attributes.get(semconv.GEN_AI_CONFIDENCE)
    label = None
    for event in span.events:
        if (
            event.name == semconv.GEN_AI_EVALUATION_EVENT
            and event.attributes.get(semconv.GEN_AI_EVALUATION_NAME, "confidence") == "confidence"
        ):
            score = event.attributes.get(semconv.GEN_AI_EVALUATION_SCORE_VALUE, score)
            label = event.attributes.get(semconv.GEN_AI_EVALUATION_SCORE_LABEL)
    if not isinstance(score, (int, float)):
        return None
    return f"confidence {score:.2f}" + (f" ({label})" if label else "")


def _or_dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _event_line(name: str, offset_ns: int, attributes: Mapping[str, Any]) -> Text:
    if name == semconv.STATUS_CHANGE_EVENT:
        return _status_change_line(offset_ns, attributes)
    if name == semconv.GEN_AI_EVALUATION_EVENT:
        return _evaluation_line(offset_ns, attributes)
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


def _status_change_line(offset_ns: int, attributes: Mapping[str, Any]) -> Text:
    """``• status running → waiting_for_human  +12 ms  reason``."""
    line = Text()
    line.append("• ", style="dim")
    line.append("status ", style="magenta")
    before, after = attributes.get(semconv.STATUS_FROM), attributes.get(semconv.STATUS_TO)
    if before:
        line.append(f"{before} → ", style="magenta")
    line.append(str(after or "?"), style=f"bold {_STATUS_STYLE.get(str(after), 'magenta')}")
    line.append(f"  +{ms(offset_ns)}", style="dim")
    reason = attributes.get(semconv.STATUS_REASON)
    if reason:
        line.append("  " + short(reason, 100), style="dim")
    return line


def _evaluation_line(offset_ns: int, attributes: Mapping[str, Any]) -> Text:
    """``• confidence 0.83 (high)  +40 ms  explanation``."""
    line = Text()
    line.append("• ", style="dim")
    line.append(str(attributes.get(semconv.GEN_AI_EVALUATION_NAME, "evaluation")), style="magenta")
    score = attributes.get(semconv.GEN_AI_EVALUATION_SCORE_VALUE)
    if isinstance(score, (int, float)):
        line.append(f" {score:.2f}", style="magenta")
    label = attributes.get(semconv.GEN_AI_EVALUATION_SCORE_LABEL)
    if label is not None:
        line.append(f" ({short(label)})", style="magenta")
    line.append(f"  +{ms(offset_ns)}", style="dim")
    explanation = attributes.get(semconv.GEN_AI_EVALUATION_EXPLANATION)
    if explanation:
        line.append("  " + short(explanation, 100), style="dim")
    return line
