"""The ``claims-triage`` workflow, independent of the web framework that serves it.

1. ``validate claim``: rules; an invalid claim fails the step and the run.
2. ``classify severity``: one AI call, to the local model (``LocalClassifier``) or to an OpenAI
   chat model (``OpenAIClassifier``); the answer's probability is its confidence.
3. ``human review``: only when the confidence is below the threshold (0.6). The step waits for a
   human (status ``waiting_for_human``) and records the verdict as a review linked to the AI call.
   Here the "human" is ``StandInReviewer``, an automatic stand-in, so the example runs unattended.
4. ``reserve funds``: the ledger service, over HTTP; the session and the run travel with the call.

With ``records`` (``records.IntakeRecords``: an audited database) each step also writes the claim:
inserted at validation, its severity and confidence at classification, its status in review and
once reserved. Each write is made inside its step, so the audit log ties it to that step's span.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from claims_triage import attributes as attr
from claims_triage.model import MODEL_NAME, SEVERITIES, Classification, Example, SeverityModel
from sessiontrace.ai import ai_call, confidence_from_logprobs, record_review
from sessiontrace.ai.content import text_message
from sessiontrace.workflow import set_status, step, workflow

WORKFLOW = "claims-triage"
CONFIDENCE_THRESHOLD = 0.6
"""Below this, a person checks the model's severity before money is reserved."""
LINES = ("motor", "property", "liability", "health")
MAX_AMOUNT = 50_000_000.0
_POLICY = re.compile(r"P-\d{4,8}")


class InvalidClaim(ValueError):
    """The claim breaks a validation rule; the message says which."""


@dataclass(frozen=True)
class Claim:
    id: str
    policy: str
    line: str
    amount: float
    description: str


@dataclass(frozen=True)
class Outcome:
    claim: Claim
    severity: str
    confidence: float
    decided_by: str
    """``model``, or ``reviewer`` when the confidence sent it to human review."""
    reserve_id: str


def validate(raw: Mapping[str, Any]) -> Claim:
    """A ``Claim`` from the request body, or ``InvalidClaim`` naming every broken rule."""
    problems = []
    policy = str(raw.get("policy") or "")
    if not _POLICY.fullmatch(policy):
        problems.append("policy must look like P-1042")
    line = str(raw.get("line") or "")
    if line not in LINES:
        problems.append(f"line must be one of {', '.join(LINES)}")
    try:
        amount = float(raw.get("amount"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        amount = math.nan
    if not 0 < amount <= MAX_AMOUNT:  # also false for NaN
        problems.append(f"amount must be a number above 0 and at most {MAX_AMOUNT:,.0f}")
    description = " ".join(str(raw.get("description") or "").split())
    if len(description.split()) < 3 or len(description) > 2000:
        problems.append("description must have 3 words or more (2000 characters at most)")
    if problems:
        raise InvalidClaim("; ".join(problems))
    return Claim(f"CL-{uuid.uuid4().hex[:8].upper()}", policy, line, amount, description)


# --- the AI step ---------------------------------------------------------------------------------------
class Classifier(Protocol):
    async def classify(self, description: str) -> tuple[Classification, SpanContext]:
        """The severity and its confidence, and the span of the AI call (for a later review)."""
        ...


class LocalClassifier:
    """The model trained at start-up (``model.py``), as an AI call of provider ``local``."""

    def __init__(self, model: SeverityModel) -> None:
        self.model = model

    async def classify(self, description: str) -> tuple[Classification, SpanContext]:
        # The answer is the arg-max class, deterministic: the temperature-0, one-token answer
        # of a generative model, so those are the request settings recorded.
        settings = {"temperature": 0.0, "max_tokens": 1}
        prompt = [text_message("user", description)]  # recorded only when content capture is on
        with ai_call(
            model=MODEL_NAME, provider="local", operation="chat", settings=settings, input_messages=prompt
        ) as call:
            result = self.model.classify(description)
            call.record_response(
                model=self.model.version,
                finish_reasons=["stop"],
                input_tokens=self.model.word_count(description),
                output_tokens=1,
                output_messages=[text_message("assistant", result.label)],
            )
            # The confidence is the predicted class's probability under the model.
            call.record_confidence(
                result.probability, label=result.label, explanation="top class probability of the local model"
            )
            return result, call.span.get_span_context()


OPENAI_INSTRUCTIONS = (
    "You triage insurance claims. Answer with exactly one word, the claim's severity: low, medium, high or critical."
)


class OpenAIClassifier:
    """An OpenAI chat model (or any OpenAI-compatible server at ``OPENAI_BASE_URL``).

    ``OpenAIInstrumentor`` turns the call into the AI span and records the geometric-mean token
    confidence on it. The routing confidence here is the probability of the answered word among
    the first token's alternatives (``top_logprobs``): for a one-word answer, the same figure.
    An answer that is not a severity gets confidence 0, so a person looks at it.
    """

    def __init__(self, model: str | None = None) -> None:
        try:
            import openai
        except ImportError as error:
            raise SystemExit(
                "OPENAI_API_KEY or OPENAI_BASE_URL is set, so the example needs: pip install 'sessiontrace[openai]'"
            ) from error
        # A local OpenAI-compatible server usually needs no key, but the SDK insists on one.
        self._client = openai.AsyncOpenAI(api_key=os.environ.get("OPENAI_API_KEY") or "unused")
        self.model = model or os.environ.get("CLAIMS_TRIAGE_OPENAI_MODEL", "gpt-4o-mini")

    async def classify(self, description: str) -> tuple[Classification, SpanContext]:
        response = await self._client.chat.completions.create(
            model=self.model,
            messages=[
                {"role": "system", "content": OPENAI_INSTRUCTIONS},
                {"role": "user", "content": description},
            ],
            temperature=0,
            max_tokens=3,
            logprobs=True,
            top_logprobs=5,
        )
        # The instrumented span has ended and is not ours to hold: the review links to the step.
        return read_answer(response), trace.get_current_span().get_span_context()


def read_answer(response: Any) -> Classification:
    """The severity a chat completion answered, with its probability from the logprobs."""
    choice = response.choices[0]
    words = (choice.message.content or "").lower().split()
    answer = words[0].strip(".,;:!\"'") if words else ""
    tokens = list(getattr(choice.logprobs, "content", None) or [])
    probabilities = dict.fromkeys(SEVERITIES, 0.0)
    if tokens:
        for alternative in tokens[0].top_logprobs or [tokens[0]]:
            word = alternative.token.strip().lower()
            if word in probabilities:
                probabilities[word] += math.exp(alternative.logprob)
    if answer not in probabilities:
        return Classification(f"unrecognised: {answer[:20]}", 0.0, probabilities)
    if not probabilities[answer]:  # a severity split over several tokens
        probabilities[answer] = confidence_from_logprobs(t.logprob for t in tokens) or 0.0
    return Classification(answer, min(1.0, probabilities[answer]), probabilities)


# --- the human step -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    decision: str
    """``approve`` the model's severity, or ``override`` it."""
    severity: str
    reason: str


class Reviewer(Protocol):
    id: str

    async def review(self, claim: Claim, proposal: Classification) -> Verdict: ...


class StandInReviewer:
    """An automatic stand-in for the claims handler who reviews unsure triages, so the example runs
    unattended. It is not a second model but a rule a handler might apply first: the severity
    whose typical (median) claimed amount in the training data is nearest to this claim's amount,
    on a log scale. It approves the model when they agree and overrides it when they do not.

    In production this step would wait, and a person would answer, often from another request.
    """

    id = "stand-in-reviewer (automatic)"

    def __init__(self, examples: Sequence[Example]) -> None:
        self.typical = {
            severity: statistics.median(e.amount for e in examples if e.severity == severity and e.amount > 0)
            for severity in SEVERITIES
        }

    async def review(self, claim: Claim, proposal: Classification) -> Verdict:
        severity = min(self.typical, key=lambda s: abs(math.log(claim.amount) - math.log(self.typical[s])))
        reason = (
            f"amount {claim.amount:,.0f} is typical of {severity} claims (median {self.typical[severity]:,.0f});"
            f" model said {proposal.label} at {proposal.probability:.2f}"
        )
        decision = "approve" if severity == proposal.label else "override"
        return Verdict(decision, severity, reason)


# --- the records ----------------------------------------------------------------------------------------
class ClaimRecords(Protocol):
    """Where the workflow keeps the claim as it moves (``records.IntakeRecords``)."""

    async def filed(self, claim: Claim) -> None:
        """The claim is valid: record it."""
        ...

    async def updated(self, claim_id: str, **values: Any) -> None:
        """Set columns of the claim (``severity``, ``confidence``, ``status``, ``reserve_id``)."""
        ...


class NoRecords:
    """Keeps nothing: the workflow without a database."""

    async def filed(self, claim: Claim) -> None:
        pass

    async def updated(self, claim_id: str, **values: Any) -> None:
        pass


# --- the workflow ---------------------------------------------------------------------------------------
ReserveFunds = Callable[[Claim, str], Awaitable[str]]
"""Reserve the claim's amount at the given severity; returns the reserve id."""


async def triage(
    raw: Mapping[str, Any],
    *,
    classifier: Classifier,
    reviewer: Reviewer,
    reserve_funds: ReserveFunds,
    threshold: float = CONFIDENCE_THRESHOLD,
    records: ClaimRecords | None = None,
) -> Outcome:
    """Run the ``claims-triage`` workflow on one claim. ``InvalidClaim`` when it breaks a rule."""
    records = records or NoRecords()
    async with workflow(WORKFLOW):
        run_span = trace.get_current_span()
        async with step("validate claim"):
            claim = validate(raw)
            trace.get_current_span().set_attributes(
                {attr.CLAIM_ID: claim.id, attr.CLAIM_POLICY: claim.policy, attr.CLAIM_LINE: claim.line}
            )
            await records.filed(claim)
        run_span.set_attribute(attr.CLAIM_ID, claim.id)

        async with step("classify severity"):
            proposal, ai_span = await classifier.classify(claim.description)
            trace.get_current_span().set_attribute(
                attr.CLAIM_SEVERITY_PROBABILITIES, [f"{k} {v:.2f}" for k, v in proposal.probabilities.items()]
            )
            await records.updated(claim.id, severity=proposal.label, confidence=round(proposal.probability, 4))
        severity, decided_by = proposal.label, "model"

        if proposal.probability < threshold:
            async with step("human review"):
                set_status("waiting_for_human", f"confidence {proposal.probability:.2f} is below {threshold}")
                await records.updated(claim.id, status="in_review")
                verdict = await reviewer.review(claim, proposal)
                record_review(
                    ai_span, verdict.decision, reason=verdict.reason, reviewer=reviewer.id, label=verdict.severity
                )
                await records.updated(claim.id, status="reviewed", severity=verdict.severity)
                set_status("running", f"reviewed: {verdict.decision} {verdict.severity}")
            severity, decided_by = verdict.severity, "reviewer"

        async with step("reserve funds"):
            reserve_id = await reserve_funds(claim, severity)
            trace.get_current_span().set_attribute(attr.RESERVE_ID, reserve_id)
            await records.updated(claim.id, status="reserved", reserve_id=reserve_id)
        run_span.set_attributes({attr.CLAIM_SEVERITY: severity, attr.CLAIM_DECIDED_BY: decided_by})
    return Outcome(claim, severity, proposal.probability, decided_by, reserve_id)
