"""Test helpers, and a pytest plugin (loaded through the ``pytest11`` entry point).

The ``capsession`` fixture captures every span finished during a test in memory, with session
stamping and propagation configured the way ``configure()`` does it. Importing this module
configures nothing: only using the fixture does.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sessiontrace import semconv


class CapturedSpans:
    """Spans finished since the fixture started (or since ``clear()``)."""

    def __init__(self, exporter: InMemorySpanExporter) -> None:
        self._exporter = exporter

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return tuple(self._exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans if span.name == name]

    def of_session(self, session_id: str) -> list[ReadableSpan]:
        return [span for span in self.spans if (span.attributes or {}).get(semconv.SESSION_ID) == session_id]

    def clear(self) -> None:
        self._exporter.clear()


def assert_session_on_every_span(spans: Iterable[ReadableSpan], session_id: str) -> None:
    """Fail, naming the offenders, unless every span carries ``session.id == session_id``."""
    spans = list(spans)
    assert spans, "no spans were captured"
    wrong = [
        f"{span.name!r} has session.id={(span.attributes or {}).get(semconv.SESSION_ID)!r}"
        for span in spans
        if (span.attributes or {}).get(semconv.SESSION_ID) != session_id
    ]
    assert not wrong, f"{len(wrong)} of {len(spans)} spans lack session {session_id}: " + "; ".join(wrong)


_exporter: InMemorySpanExporter | None = None


def capture() -> CapturedSpans:
    """Configure stamping and propagation (no exporter of ours) once per process, and capture
    finished spans in memory. The fixture calls this; other test runners can too."""
    global _exporter
    if _exporter is None:
        from sessiontrace.config import configure

        configuration = configure(exporter="none")
        assert configuration.tracer_provider is not None, "OTEL_SDK_DISABLED is set: nothing to capture"
        _exporter = InMemorySpanExporter()
        configuration.tracer_provider.add_span_processor(SimpleSpanProcessor(_exporter))
    return CapturedSpans(_exporter)


@pytest.fixture
def capsession() -> Iterator[CapturedSpans]:
    """Spans finished during this test, with sessiontrace stamping on."""
    captured = capture()
    captured.clear()
    yield captured
    captured.clear()


__all__: Sequence[str] = ["CapturedSpans", "assert_session_on_every_span", "capsession", "capture"]
