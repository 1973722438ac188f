"""The terminal tree says what matters about AI calls, workflow steps and reviews, in words."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from rich.console import Console

from sessiontrace import semconv
from sessiontrace.path import build_path
from sessiontrace.records import StoredEvent, StoredLink, StoredSpan
from sessiontrace.render.tree import render_tree

SESSION = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
TRACE = "a" * 32
MS = 1_000_000


def _span(
    span_id: str,
    parent: str | None,
    name: str,
    start: int,
    *,
    attributes: Mapping[str, Any] | None = None,
    events: tuple[StoredEvent, ...] = (),
    links: tuple[StoredLink, ...] = (),
) -> StoredSpan:
    return StoredSpan(
        trace_id=TRACE,
        span_id=span_id * 16,
        parent_span_id=parent * 16 if parent else None,
        name=name,
        kind="INTERNAL",
        start_ns=start * MS,
        end_ns=(start + 5) * MS,
        service_name="intake",
        session_id=SESSION,
        attributes={semconv.SESSION_ID: SESSION, **(attributes or {})},
        events=events,
        links=links,
    )


def _status(before: str, after: str, at: int, reason: str | None = None) -> StoredEvent:
    attributes = {semconv.STATUS_FROM: before, semconv.STATUS_TO: after}
    if reason:
        attributes[semconv.STATUS_REASON] = reason
    return StoredEvent(semconv.STATUS_CHANGE_EVENT, at * MS, attributes)


def _render(*spans: StoredSpan) -> str:
    page = io.StringIO()
    Console(width=200, no_color=True, file=page).print(render_tree(build_path(SESSION, spans)))
    return page.getvalue()


class TestTreeFacts:
    """AI spans show model (provider), confidence with its label and tokens; runs and steps their
    status trail; reviews their decision and the call they judged."""

    def test_ai_call(self) -> None:
        ai = _span(
            "1",
            None,
            "chat claims-severity-lr",
            0,
            attributes={
                semconv.GEN_AI_OPERATION_NAME: "chat",
                semconv.GEN_AI_PROVIDER_NAME: "local",
                semconv.GEN_AI_REQUEST_MODEL: "claims-severity-lr",
                semconv.GEN_AI_RESPONSE_MODEL: "claims-severity-lr-58e46efe",
                semconv.GEN_AI_USAGE_INPUT_TOKENS: 15,
                semconv.GEN_AI_USAGE_OUTPUT_TOKENS: 1,
                semconv.GEN_AI_CONFIDENCE: 0.83,
            },
            events=(
                StoredEvent(
                    semconv.GEN_AI_EVALUATION_EVENT,
                    1 * MS,
                    {
                        semconv.GEN_AI_EVALUATION_NAME: "confidence",
                        semconv.GEN_AI_EVALUATION_SCORE_VALUE: 0.83,
                        semconv.GEN_AI_EVALUATION_SCORE_LABEL: "high",
                        semconv.GEN_AI_EVALUATION_EXPLANATION: "top class probability",
                    },
                ),
            ),
        )
        out = _render(ai)
        line = next(line for line in out.splitlines() if "chat claims-severity-lr" in line)
        assert "model claims-severity-lr-58e46efe (local)" in line
        assert "confidence 0.83 (high)" in line
        assert "tokens 15→1" in line
        assert "• confidence 0.83 (high)" in out
        assert "top class probability" in out

    def test_a_model_switch_shows_both(self) -> None:
        ai = _span(
            "1",
            None,
            "chat gpt-4o",
            0,
            attributes={
                semconv.GEN_AI_OPERATION_NAME: "chat",
                semconv.GEN_AI_PROVIDER_NAME: "openai",
                semconv.GEN_AI_REQUEST_MODEL: "gpt-4o",
                semconv.GEN_AI_RESPONSE_MODEL: "other-model",
            },
        )
        assert "model gpt-4o → other-model (openai)" in _render(ai)

    def test_step_status_trail_and_review(self) -> None:
        step = _span(
            "2",
            None,
            "step human review",
            0,
            attributes={
                semconv.STEP_NAME: "human review",
                semconv.WORKFLOW_STATUS: "succeeded",
                semconv.STEP_RESULT: "success",
            },
            events=(
                _status("pending", "running", 0),
                _status("running", "waiting_for_human", 1, "confidence 0.40 is below 0.6"),
                _status("waiting_for_human", "running", 2, "reviewed: approve medium"),
                _status("running", "succeeded", 3),
            ),
        )
        ai = _span("1", None, "chat claims-severity-lr", 0, attributes={semconv.GEN_AI_OPERATION_NAME: "chat"})
        review = _span(
            "3",
            "2",
            semconv.GEN_AI_REVIEW_SPAN,
            1,
            attributes={semconv.GEN_AI_REVIEW_DECISION: "approve", semconv.GEN_AI_REVIEWER: "alice"},
            links=(StoredLink(TRACE, "1" * 16),),
        )
        out = _render(step, ai, review)
        step_line = next(line for line in out.splitlines() if "step human review" in line)
        assert "status running → waiting_for_human → running → succeeded" in step_line
        assert "result" not in step_line  # the trail already says it
        assert "• status running → waiting_for_human" in out
        assert "confidence 0.40 is below 0.6" in out
        assert "• status pending → running" not in out  # no reason: the trail has it
        review_line = next(line for line in out.splitlines() if semconv.GEN_AI_REVIEW_SPAN in line)
        assert "decision approve by alice" in review_line
        assert "reviews chat claims-severity-lr" in review_line

    def test_failed_step_without_events(self) -> None:
        step = _span(
            "2",
            None,
            "step validate claim",
            0,
            attributes={semconv.STEP_NAME: "validate claim", semconv.WORKFLOW_STATUS: "failed"},
        )
        line = next(line for line in _render(step).splitlines() if "step validate claim" in line)
        assert "status failed" in line
