"""The session path as a time-ordered tree for the terminal (``rich``).

One line per span: ``name  [service]  +offset  duration``, offsets from the session's first span,
then what matters about that kind of span: for an AI call its model (provider), confidence and
tokens (in→out); for a workflow run or step the statuses it went through (the last one is its
result); for a human review its decision and the call it judged. Failures are red with their
message; the first failure is marked, since the spans above it usually only repeat it. Events
follow their span with a few attributes each (status changes with a reason, and evaluations, in
words): readable, not a dump.

Database changes show under the span that made them, in time order with its child spans, with
their diff:
``• update claims {"id": "CL-1"}  +3.1 ms  severity: null → "high", confidence: null → 0.85  audit #7``.
When the audit log was joined (``path.attach_changes``) the changes and their values come from the
log itself (``audit #seq``), and a change event with no audit row is flagged; otherwise they come
from the spans' ``DB_CHANGE_EVENT``s, whose values are there only when the application recorded
them (``enable_auditing(record_values_in_spans=True)``), else just the changed columns are named.
``rich`` drops colour for ``NO_COLOR`` and non-terminals by itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, Group
from rich.text import Text
from rich.tree import Tree

from sessiontrace import semconv
from sessiontrace._stored import load_json
from sessiontrace.path import PathSpan, SessionPath, unmatched_change_events
from sessiontrace.records import StoredChange, StoredEvent
from sessiontrace.render import _format
from sessiontrace.render._format import escape, escape_text, ms, short, timestamp

MAX_EVENT_ATTRIBUTES = 4
MAX_EVENTS = 10
MAX_CHANGES = 20
MAX_CHANGE_FIELDS = 6
MAX_CHANGE_VALUE = 40
MAX_DEPTH = 24
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
    text.append(escape(path.session_id), style="bold cyan")
    people = [
        ("user", escape(path.user_id or "-")),
        ("trigger", escape(path.trigger_source or "-")),
        ("services", escape(", ".join(path.services) or "-")),
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
            _add_span(branch, span, origin, failure, names, path.audit_joined)
        if trace.unplaced_changes:
            unplaced = branch.add(Text("changes whose span is not stored", style="dim italic"))
            _add_lines(unplaced, [(c.time_ns, _change_line(c, origin)) for c in trace.unplaced_changes], MAX_CHANGES)
    _escape_labels(root)
    return root


def _add_span(
    parent: Tree,
    span: PathSpan,
    origin: int,
    failure: PathSpan | None,
    names: Mapping[str, str],
    audit_joined: bool,
) -> None:
    """``span`` and its descendants under ``parent``; iterative, so a trace of any depth renders.
    Below ``MAX_DEPTH`` levels spans are no longer indented (the terminal has no room left) but
    listed under the last indented one, each marked with its depth."""
    line = _span_line(span, origin, is_first_failure=span is failure, names=names)
    # (span, its node, the node its children's lines go under, its depth)
    node = parent.add(line)
    pending = [(span, node, node, 1)]
    while pending:
        span, node, holder, depth = pending.pop()
        # A status change without a reason says nothing the span line's status trail does not.
        events = [
            e for e in span.events if e.name != semconv.STATUS_CHANGE_EVENT or semconv.STATUS_REASON in e.attributes
        ]
        others = [e for e in events if e.name != semconv.DB_CHANGE_EVENT]
        change_events = [e for e in events if e.name == semconv.DB_CHANGE_EVENT]
        if audit_joined:  # the audit log's own rows replace the change events they account for
            change_events = unmatched_change_events(span)
        for event in others[:MAX_EVENTS]:
            node.add(_event_line(event, event.time_ns - origin))
        if len(others) > MAX_EVENTS:
            node.add(Text(f"… {len(others) - MAX_EVENTS} more events", style="dim"))
        # Changes read in time order with the child spans: a step's update after the call that led to it.
        changes = [(e.time_ns, _event_line(e, e.time_ns - origin, audit_joined)) for e in change_events]
        changes += [(c.time_ns, _change_line(c, origin)) for c in span.changes]
        changes.sort(key=lambda line: line[0])  # stable: same-time lines keep their order
        hidden = max(0, len(changes) - MAX_CHANGES)
        entries: list[tuple[int, Text | PathSpan]] = [*changes[:MAX_CHANGES], *((c.start_ns, c) for c in span.children)]
        entries.sort(key=lambda entry: entry[0])
        for _, entry in entries:
            if isinstance(entry, Text):
                node.add(entry)
            else:  # its line now, in order; its own lines when popped
                line = _span_line(entry, origin, is_first_failure=entry is failure, names=names)
                if depth < MAX_DEPTH:
                    child = node.add(line)
                    pending.append((entry, child, child, depth + 1))
                else:
                    child = holder.add(Text(f"↳ depth {depth + 1}  ", style="dim") + line)
                    pending.append((entry, child, holder, depth + 1))
        if hidden:
            node.add(Text(f"… {hidden} more changes", style="dim"))


def _escape_labels(tree: Tree) -> None:
    """Escape the control characters of every line: span names, messages and attributes are
    untrusted, and must not drive the operator's terminal."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node.label, Text):
            node.label = escape_text(node.label)
        pending.extend(node.children)


def _add_lines(node: Tree, lines: list[tuple[int, Text]], limit: int) -> None:
    for _, line in sorted(lines, key=lambda line: line[0])[:limit]:
        node.add(line)
    if len(lines) > limit:
        node.add(Text(f"… {len(lines) - limit} more changes", style="dim"))


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
    if span.unreadable:
        line.append(_unreadable("store", span.unreadable), style="yellow")
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


def _event_line(event: StoredEvent, offset_ns: int, audit_joined: bool = False) -> Text:
    name, attributes = event.name, event.attributes
    if name == semconv.STATUS_CHANGE_EVENT:
        return _status_change_line(offset_ns, attributes)
    if name == semconv.GEN_AI_EVALUATION_EVENT:
        return _evaluation_line(offset_ns, attributes)
    if name == semconv.DB_CHANGE_EVENT:
        return _change_event_line(offset_ns, attributes, audit_joined)
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


# --- database changes ----------------------------------------------------------------------------------


def _change_line(change: StoredChange, origin: int) -> Text:
    """A change from the audit log: ``• update claims {"id": "CL-1"}  +3 ms  a: 1 → 2  audit #7``."""
    line = _diff_line(
        change.change_type,
        change.table_name,
        change.record_id,
        change.time_ns - origin,
        change.changed_fields,
        change.previous_values,
        change.new_values,
    )
    if change.seq is not None:
        line.append(f"  audit #{change.seq}", style="dim")
    if change.unreadable:
        line.append(_unreadable("audit log", change.unreadable), style="yellow")
    return line


def _unreadable(where: str, columns: Mapping[str, Any]) -> str:
    """Says which stored columns were damaged; the JSON document keeps their stored text."""
    return f"  ⚠ unreadable in the {where}: {', '.join(columns)} (stored text in --format json)"


def _change_event_line(offset_ns: int, attributes: Mapping[str, Any], audit_joined: bool) -> Text:
    """A change from its span event: values only if the application recorded them in spans."""
    fields = attributes.get(semconv.DB_CHANGED_FIELDS) or ()
    line = _diff_line(
        str(attributes.get(semconv.DB_CHANGE_TYPE, "change")),
        str(attributes.get(semconv.DB_COLLECTION_NAME, "?")),
        str(attributes.get(semconv.DB_RECORD_ID, "")),
        offset_ns,
        [str(f) for f in fields] if isinstance(fields, (list, tuple)) else [str(fields)],
        _json_object(attributes.get(semconv.DB_PREVIOUS_VALUES)),
        _json_object(attributes.get(semconv.DB_NEW_VALUES)),
    )
    seq = attributes.get(semconv.DB_AUDIT_SEQ)
    if seq is not None:
        line.append(f"  audit #{seq}", style="dim")
    if audit_joined:
        line.append("  (not in the audit log)", style="yellow")
    return line


def _diff_line(
    change_type: str,
    table: str,
    record_id: str,
    offset_ns: int,
    fields: Sequence[str],
    previous: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> Text:
    line = Text()
    line.append("• ", style="dim")
    line.append(f"{change_type} {table}", style="magenta")
    key = _json_object(record_id)
    line.append(" " + (json.dumps(key, ensure_ascii=False, default=str) if key is not None else record_id), style="dim")
    line.append(f"  +{ms(offset_ns)}", style="dim")
    pairs = _diff(change_type, fields, previous, new, key or {})
    if pairs:
        shown = ", ".join(pairs[:MAX_CHANGE_FIELDS])
        more = len(pairs) - MAX_CHANGE_FIELDS
        line.append("  " + shown + (f", +{more} more" if more > 0 else ""))
    return line


def _diff(
    change_type: str,
    fields: Sequence[str],
    previous: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    key: Mapping[str, Any],
) -> list[str]:
    """``column: old → new`` per changed column of an update; ``column: value`` for an insert's new
    and a delete's old values (the key, already shown, and NULLs left out). Without values (not
    recorded in the span), the changed columns' names."""
    if change_type == "update" and previous is not None and new is not None:
        return [f"{f}: {_value(previous.get(f))} → {_value(new.get(f))}" for f in fields if f in previous or f in new]
    values = new if change_type == "insert" else previous if change_type == "delete" else None
    if values is not None:
        return [f"{f}: {_value(values[f])}" for f in fields if f not in key and values.get(f) is not None]
    return [", ".join(fields) + " changed"] if fields else []


def _value(value: Any) -> str:
    return short(json.dumps(value, ensure_ascii=False, default=str), MAX_CHANGE_VALUE)


def _json_object(text: Any) -> Mapping[str, Any] | None:
    """A JSON object from a span attribute (values recorded as JSON text), else ``None``."""
    if not isinstance(text, str):
        return None
    # Not JSON (cut or redacted), or nested too deep to render (a hostile record id): shown as text.
    value, ok = load_json(text)
    return value if ok and isinstance(value, dict) else None
