"""The session path model: trees per trace, orphans, ordering, first failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from _pathdata import write_scenario
from sessiontrace.path import PathSpan, build_path
from sessiontrace.records import StoredSpan
from sessiontrace.sources import SessionNotFound
from sessiontrace.sources.store import load_session_path
from sessiontrace.store import SpanStore

SID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"


def span(
    span_id: str,
    parent: str | None,
    start: int,
    end: int | None = None,
    *,
    trace: str = "t1",
    status: str = "UNSET",
    service: str | None = "svc",
) -> StoredSpan:
    return StoredSpan(
        trace_id=trace,
        span_id=span_id,
        parent_span_id=parent,
        name=f"op-{span_id}",
        kind="INTERNAL",
        start_ns=start,
        end_ns=start + 10 if end is None else end,
        status_code=status,
        service_name=service,
        session_id=SID,
    )


def names(spans: list[PathSpan]) -> list[str]:
    return [s.span_id for s in spans]


class TestBuildPath:
    """Spans in any order become per-trace trees ordered by start time."""

    def test_children_and_traces_by_start_time(self) -> None:
        path = build_path(
            SID,
            [
                span("c2", "r", 30),
                span("r", None, 10, 100),
                span("c1", "r", 20),
                span("x", None, 5, trace="t0"),
                span("g", "c1", 25),
            ],
        )
        assert [t.trace_id for t in path.traces] == ["t0", "t1"]
        (root,) = path.traces[1].roots
        assert names(root.children) == ["c1", "c2"]
        assert names(root.children[0].children) == ["g"]
        assert [s.span_id for s in path.walk()] == ["x", "r", "c1", "g", "c2"]
        assert path.span_count == 5
        assert not any(s.orphan for s in path.walk())

    def test_span_with_missing_parent_becomes_orphan_root(self) -> None:
        path = build_path(SID, [span("r", None, 10), span("o", "gone", 5), span("c", "o", 6)])
        roots = path.traces[0].roots
        assert names(roots) == ["o", "r"]
        assert [r.orphan for r in roots] == [True, False]
        assert names(roots[0].children) == ["c"]

    def test_parent_cycle_does_not_hide_spans(self) -> None:
        path = build_path(SID, [span("a", "b", 1), span("b", "a", 2), span("r", None, 0)])
        assert sorted(s.span_id for s in path.walk()) == ["a", "b", "r"]
        assert path.traces[0].roots[1].orphan

    def test_duplicates_are_ignored(self) -> None:
        path = build_path(SID, [span("r", None, 1), span("r", None, 1)])
        assert path.span_count == 1

    def test_first_failure_is_earliest_ending_error(self) -> None:
        path = build_path(
            SID,
            [
                span("r", None, 0, 100, status="ERROR"),
                span("late", "r", 10, 90, status="ERROR"),
                span("early", "r", 20, 30, status="ERROR"),
                span("ok", "r", 1, 5),
            ],
        )
        failure = path.first_failure()
        assert failure is not None
        assert failure.span_id == "early"
        assert path.error_count == 3
        assert build_path(SID, [span("ok", None, 1)]).first_failure() is None

    def test_duration_and_services(self) -> None:
        path = build_path(
            SID,
            [
                span("a", None, 100, 150, service="web"),
                span("b", None, 120, 400, service="worker", trace="t2"),
                span("c", "a", 110, 120, service="web"),
                span("d", "b", 130, None, service=None),
            ],
        )
        assert path.start_ns == 100
        assert path.end_ns == 400
        assert path.duration_ns == 300
        assert path.services == ["web", "worker"]

    def test_unended_span(self) -> None:
        s = StoredSpan("t", "a", None, "open", "INTERNAL", 50, None, session_id=SID)
        path = build_path(SID, [s])
        (only,) = path.walk()
        assert only.duration_ns == 0
        assert path.duration_ns == 0


class TestLoadFromStore:
    """A session spanning two traces, read back from a real store."""

    def test_two_traces_with_unstamped_and_orphan_spans(self, tmp_path: Path) -> None:
        store_path = tmp_path / "spans.sqlite3"
        scenario = write_scenario(store_path)
        with SpanStore(store_path, readonly=True) as store:
            path = load_session_path(store, scenario.session_id.upper())

        assert path.session_id == scenario.session_id
        assert [t.trace_id for t in path.traces] == [
            scenario.web_trace_id,
            scenario.worker_trace_id,
        ]
        web, worker = path.traces
        (request,) = web.roots
        assert request.name == "POST /claims"
        (validate,) = request.children
        (vendor,) = validate.children
        assert vendor.name == "vendor lookup"
        assert vendor.session_id is None  # part of the path though never stamped

        assert [(r.name, r.orphan) for r in worker.roots] == [
            ("process claim", False),
            ("late callback", True),
        ]
        assert worker.roots[1].parent_span_id == scenario.orphan_parent_id
        assert [c.name for c in worker.roots[0].children] == ["chat gpt-4o", "save claim"]

        failure = path.first_failure()
        assert failure is not None
        assert failure.name == "chat gpt-4o"
        assert path.user_id == "alice"
        assert path.trigger_source == "api"
        assert path.trigger_type == "POST /claims"
        assert path.services == ["web", "worker"]
        assert path.span_count == 7

    def test_unknown_session(self, tmp_path: Path) -> None:
        store_path = tmp_path / "spans.sqlite3"
        write_scenario(store_path)
        with SpanStore(store_path, readonly=True) as store, pytest.raises(SessionNotFound):
            load_session_path(store, SID)
        assert issubclass(SessionNotFound, LookupError)
