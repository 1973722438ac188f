"""Confidence, explanations and human review, as ``gen_ai.evaluation.result`` events.

How a confidence is derived from token log-probabilities (``confidence_from_logprobs``): the
geometric mean of the chosen tokens' probabilities, ``exp(mean(logprob))``. It is 1.0 when the
model was certain of every token and falls towards 0 as any token was a guess; unlike the
product of probabilities it does not shrink just because the answer is long. A token of
probability 0 (logprob ``-inf``) makes it 0; NaN and ``+inf`` say nothing and are skipped.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind

from sessiontrace import semconv
from sessiontrace._tracer import AI_TRACER_NAME, GlobalTracer

_tracer = GlobalTracer(AI_TRACER_NAME)
_LARGEST_LOG = math.log(sys.float_info.max)
"""The largest x whose ``exp(x)`` is a float (about 709.78)."""


def record_confidence(
    score: float,
    label: str | None = None,
    explanation: str | None = None,
    *,
    name: str = "confidence",
    span: Span | None = None,
) -> None:
    """Add a ``gen_ai.evaluation.result`` event to ``span`` (default: the current span) and set
    ``sessiontrace.gen_ai.confidence`` on it. ``score`` is any real number (numpy's included)
    with 0 <= score <= 1, and ``name`` a non-empty string, else ``ValueError``."""
    score = _checked_score(score)
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    target = span if span is not None else trace.get_current_span()
    attributes: dict[str, str | float] = {
        semconv.GEN_AI_EVALUATION_NAME: name,
        semconv.GEN_AI_EVALUATION_SCORE_VALUE: score,
    }
    if label is not None:
        attributes[semconv.GEN_AI_EVALUATION_SCORE_LABEL] = str(label)
    if explanation is not None:
        attributes[semconv.GEN_AI_EVALUATION_EXPLANATION] = str(explanation)
    target.add_event(semconv.GEN_AI_EVALUATION_EVENT, attributes)
    if name == "confidence":
        target.set_attribute(semconv.GEN_AI_CONFIDENCE, score)


def confidence_from_logprobs(logprobs: Iterable[float]) -> float | None:
    """``exp(mean(logprobs))`` of the chosen tokens, or None when there are none; 0.0 when one
    has logprob ``-inf``. ``ValueError`` for a logprob or mean beyond a float's range."""
    values: list[float] = []
    for value in logprobs:
        if value is None:
            continue
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range (no repr: it may have 1000s of digits)
            raise ValueError("logprob out of range: an integer too large for a float") from None
        if not math.isnan(number) and number != math.inf:  # -inf stays: a token of probability 0
            values.append(number)
    if not values:
        return None
    mean = sum(values) / len(values)
    # A mean this high (or a sum overflowed to +inf) is no probability's: exp() would overflow.
    if mean > _LARGEST_LOG:
        raise ValueError("logprobs out of range: exp() of their mean overflows a float")
    return min(1.0, max(0.0, math.exp(mean)))


def record_review(
    judged: SpanContext,
    decision: str,
    *,
    reason: str,
    reviewer: str | None = None,
    label: str | None = None,
) -> None:
    """A human's verdict on an AI call: a ``gen_ai.review`` span linked to the judged call's span
    (which may be in another trace, hours later), carrying an evaluation event named
    ``human_review``. ``decision`` is ``approve`` or ``override``; ``label`` is the human's answer.
    ``TypeError`` unless ``judged`` is a ``SpanContext``; ``ValueError`` for an invalid one (a
    link to nothing), a bad decision, a reason that is not a non-blank string, or a reviewer or
    label that is not a string. The span goes to the global provider, even when the judged call
    went to one given to an instrumentor: a review is the application's own span."""
    if not isinstance(judged, SpanContext):
        raise TypeError(f"judged must be a SpanContext (e.g. span.get_span_context()), got {type(judged).__name__}")
    if not judged.is_valid:
        raise ValueError("judged is an invalid SpanContext: the review would link to no AI call")
    for name, value in (("reviewer", reviewer), ("label", label)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if decision not in ("approve", "override"):
        raise ValueError(f"decision must be 'approve' or 'override', got {decision!r}")
    if not isinstance(reason, str) or not reason.strip():
        raise ValueError(f"a review needs a reason (a non-blank string), got {reason!r}")
    attributes: dict[str, str] = {semconv.GEN_AI_REVIEW_DECISION: decision}
    if reviewer:
        attributes[semconv.GEN_AI_REVIEWER] = reviewer
    with _tracer.get().start_as_current_span(
        semconv.GEN_AI_REVIEW_SPAN, kind=SpanKind.INTERNAL, links=[Link(judged)], attributes=attributes
    ) as span:
        event: dict[str, str | float] = {
            semconv.GEN_AI_EVALUATION_NAME: "human_review",
            semconv.GEN_AI_EVALUATION_SCORE_VALUE: 1.0 if decision == "approve" else 0.0,
            semconv.GEN_AI_EVALUATION_EXPLANATION: reason,
        }
        if label is not None:
            event[semconv.GEN_AI_EVALUATION_SCORE_LABEL] = label
        span.add_event(semconv.GEN_AI_EVALUATION_EVENT, event)


def _checked_score(score: float) -> float:
    # numbers.Real: numpy's float32/float64 too (float32 is no float subclass); bool is not a score
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise ValueError(f"confidence must be a number in [0, 1], got {score!r}")
    try:
        value = float(score)
    except OverflowError:  # an int beyond a float's range (no repr: it may have 1000s of digits)
        raise ValueError("confidence must be in [0, 1], got an integer too large for a float") from None
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"confidence must be in [0, 1], got {score!r}")
    return value
