"""AI calls as GenAI spans: a generic ``ai_call()`` for any model, confidence and human review
events, and (in submodules) instrumentors for the OpenAI and Anthropic SDKs."""

from __future__ import annotations

from sessiontrace.ai.call import AICall, ai_call
from sessiontrace.ai.confidence import confidence_from_logprobs, record_confidence, record_review
from sessiontrace.ai.content import capture_content, set_capture_content

__all__ = [
    "AICall",
    "ai_call",
    "capture_content",
    "confidence_from_logprobs",
    "record_confidence",
    "record_review",
    "set_capture_content",
]
