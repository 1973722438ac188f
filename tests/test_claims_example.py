"""The claims-triage example (examples/claims_triage): its data set, its model, its workflow rules,
its audited records, and its OpenAI branch against the fake OpenAI server on loopback. The two
services running together are tested by test_demo.py (and on PostgreSQL by test_demo_audit.py)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from sqlalchemy import create_engine, select

from claims_triage import model
from claims_triage.intake import uses_openai
from claims_triage.model import SEVERITIES, SeverityModel
from claims_triage.triage import (
    CONFIDENCE_THRESHOLD,
    Claim,
    InvalidClaim,
    LocalClassifier,
    StandInReviewer,
    read_answer,
    triage,
    validate,
)
from sessiontrace import semconv
from sessiontrace.context import session
from sessiontrace.testing import CapturedSpans, assert_session_on_every_span

CLEAR_CUT = {
    "Small scratch on the door in a car park, nobody hurt.": "low",
    "Fatal crash on the motorway, driver killed.": "critical",
    "Head-on collision on the motorway, driver taken to hospital with fractures, car written off.": "high",
    "Washing machine leaked and ruined the kitchen floor, new flooring needed.": "medium",
}
"""Descriptions the model never saw, worded plainly: it must get them right, and be sure."""
AMBIGUOUS = (
    "Tree branch fell on the car roof in the storm.",
    "Water damage in the kitchen, extent not known yet.",
    "Hail damage to the roof of the house, water coming into the bedroom.",
)
"""Never seen either, and vague about the extent: the model must say it is unsure."""

VALID = {"policy": "P-1042", "line": "motor", "amount": 2400, "description": "Branch fell on the car roof."}


@pytest.fixture(scope="module")
def trained() -> SeverityModel:
    return model.train()


class TestDataSet:
    """The shipped data set: about 240 hand-written claims, balanced over severities and lines."""

    def test_shape(self) -> None:
        examples = model.load_examples()
        assert len(examples) == 240
        assert Counter(e.severity for e in examples) == dict.fromkeys(SEVERITIES, 60)
        assert {e.line for e in examples} == {"motor", "property", "liability", "health"}
        assert len({e.description for e in examples}) == len(examples), "duplicate descriptions"
        assert all(e.amount >= 0 for e in examples)


class TestModel:
    """The local model learns severity from wording; its top probability is the confidence."""

    def test_trains_quickly_at_service_start(self) -> None:
        started = time.perf_counter()
        fresh = model.train()
        assert time.perf_counter() - started < 2.0
        assert fresh.examples == 240
        assert fresh.version.startswith(model.MODEL_NAME + "-")

    def test_is_deterministic(self, trained: SeverityModel) -> None:
        again = model.train()
        assert again.version == trained.version
        for text in (*CLEAR_CUT, *AMBIGUOUS):
            assert again.classify(text) == trained.classify(text)

    @pytest.mark.parametrize(("text", "severity"), CLEAR_CUT.items())
    def test_classifies_obvious_claims_with_confidence(self, trained: SeverityModel, text: str, severity: str) -> None:
        result = trained.classify(text)
        assert result.label == severity, result
        assert result.probability >= CONFIDENCE_THRESHOLD, result

    @pytest.mark.parametrize("text", AMBIGUOUS)
    def test_is_unsure_of_ambiguous_claims(self, trained: SeverityModel, text: str) -> None:
        assert trained.classify(text).probability < CONFIDENCE_THRESHOLD

    def test_confidence_is_the_top_class_probability(self, trained: SeverityModel) -> None:
        result = trained.classify(AMBIGUOUS[0])
        assert list(result.probabilities) == list(SEVERITIES)
        assert math.isclose(sum(result.probabilities.values()), 1.0)
        assert result.probability == max(result.probabilities.values()) == result.probabilities[result.label]

    def test_generalises_beyond_its_training_data(self) -> None:
        """Cross-validated: well above the 0.25 of guessing, so the wording is really learned."""
        from sklearn.model_selection import StratifiedKFold, cross_val_score

        examples = model.load_examples()
        scores = cross_val_score(
            model.train().pipeline,
            [e.description for e in examples],
            [e.severity for e in examples],
            cv=StratifiedKFold(5, shuffle=True, random_state=0),
        )
        assert scores.mean() > 0.5, scores


class TestValidate:
    """Validation rules: a claim needs a policy number, a line, a sane amount and a description."""

    def test_valid_claim(self) -> None:
        claim = validate(VALID)
        assert (claim.policy, claim.line, claim.amount) == ("P-1042", "motor", 2400.0)
        assert claim.id.startswith("CL-")

    @pytest.mark.parametrize(
        ("change", "rule"),
        [
            ({"policy": "1042"}, "policy"),
            ({"line": "marine"}, "line"),
            ({"amount": 0}, "amount"),
            ({"amount": "lots"}, "amount"),
            ({"amount": math.nan}, "amount"),
            ({"amount": 1e12}, "amount"),
            ({"description": "roof"}, "description"),
        ],
    )
    def test_each_rule(self, change: dict[str, Any], rule: str) -> None:
        with pytest.raises(InvalidClaim, match=rule):
            validate({**VALID, **change})


class TestStandInReviewer:
    """The automatic stand-in approves the model when the amount is typical of its severity."""

    def test_approves_or_overrides_by_typical_amount(self) -> None:
        reviewer = StandInReviewer(model.load_examples())
        proposal = model.Classification("medium", 0.4, {})
        small = Claim("CL-1", "P-1042", "motor", 2400.0, "Branch fell on the car roof.")
        large = Claim("CL-2", "P-1042", "motor", 250_000.0, "Branch fell on the car roof.")
        approved = asyncio.run(reviewer.review(small, proposal))
        overridden = asyncio.run(reviewer.review(large, proposal))
        assert (approved.decision, approved.severity) == ("approve", "medium")
        assert (overridden.decision, overridden.severity) == ("override", "high")
        assert "model said medium at 0.40" in overridden.reason


def _spans_by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


async def _reserve(claim: Claim, severity: str) -> str:
    return "R-00001"


class TestWorkflow:
    """In process, with the local model: steps, the AI span and its confidence, the review."""

    def test_unsure_answer_goes_to_human_review(self, capsession: CapturedSpans, trained: SeverityModel) -> None:
        reviewer = StandInReviewer(model.load_examples())
        with session() as s:
            outcome = asyncio.run(
                triage(
                    {**VALID, "description": AMBIGUOUS[0]},
                    classifier=LocalClassifier(trained),
                    reviewer=reviewer,
                    reserve_funds=_reserve,
                )
            )
        assert (outcome.decided_by, outcome.reserve_id) == ("reviewer", "R-00001")
        spans = _spans_by_name(capsession.spans)
        assert_session_on_every_span(spans.values(), s.id)
        ai = spans[f"chat {model.MODEL_NAME}"]
        attributes = dict(ai.attributes or {})
        assert attributes[semconv.GEN_AI_PROVIDER_NAME] == "local"
        assert attributes[semconv.GEN_AI_RESPONSE_MODEL] == trained.version
        assert attributes[semconv.GEN_AI_CONFIDENCE] == pytest.approx(outcome.confidence)
        assert ai.parent is not None
        assert ai.parent.span_id == spans["step classify severity"].context.span_id
        review = spans[semconv.GEN_AI_REVIEW_SPAN]
        assert [link.context.span_id for link in review.links] == [ai.context.span_id]
        statuses = [(e.attributes or {}).get(semconv.STATUS_TO) for e in spans["step human review"].events]
        assert statuses == ["running", "waiting_for_human", "running", "succeeded"]
        assert {"step validate claim", "step reserve funds", "workflow claims-triage"} <= set(spans)

    def test_sure_answer_skips_review_and_invalid_claim_fails(
        self, capsession: CapturedSpans, trained: SeverityModel
    ) -> None:
        reviewer = StandInReviewer(model.load_examples())
        text = next(iter(CLEAR_CUT))
        kwargs: dict[str, Any] = {
            "classifier": LocalClassifier(trained),
            "reviewer": reviewer,
            "reserve_funds": _reserve,
        }
        outcome = asyncio.run(triage({**VALID, "amount": 120, "description": text}, **kwargs))
        assert (outcome.severity, outcome.decided_by) == ("low", "model")
        assert "step human review" not in _spans_by_name(capsession.spans)
        capsession.clear()
        with pytest.raises(InvalidClaim):
            asyncio.run(triage({**VALID, "policy": "nope"}, **kwargs))
        spans = _spans_by_name(capsession.spans)
        assert set(spans) == {"workflow claims-triage", "step validate claim"}
        for span in spans.values():
            assert (span.attributes or {})[semconv.WORKFLOW_STATUS] == "failed"


class TestOpenAIBranch:
    """With ``OPENAI_API_KEY`` / ``OPENAI_BASE_URL`` set the AI step is an OpenAI chat completion:
    the real SDK, instrumented, against the fake server (which always answers "Hello from the fake
    model.", not a severity, so the claim must go to a person)."""

    @pytest.fixture
    def fake(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        pytest.importorskip("openai")
        from _fake_openai import FakeOpenAI
        from sessiontrace.ai.openai import OpenAIInstrumentor

        with FakeOpenAI() as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
            monkeypatch.setenv("OPENAI_API_KEY", "test-key")
            instrumentor = OpenAIInstrumentor()
            instrumentor.instrument()
            try:
                yield server
            finally:
                instrumentor.uninstrument()

    def test_switch(self) -> None:
        assert not uses_openai({})
        assert uses_openai({"OPENAI_API_KEY": "k"})
        assert uses_openai({"OPENAI_BASE_URL": "http://127.0.0.1:1234/v1"})

    def test_non_severity_answer_goes_to_review(self, capsession: CapturedSpans, fake: Any) -> None:
        from claims_triage.triage import OpenAIClassifier

        reviewer = StandInReviewer(model.load_examples())
        with session() as s:
            outcome = asyncio.run(
                triage(VALID, classifier=OpenAIClassifier(), reviewer=reviewer, reserve_funds=_reserve)
            )
        assert (outcome.confidence, outcome.decided_by, outcome.severity) == (0.0, "reviewer", "medium")
        (request,) = fake.requests
        assert request["logprobs"] is True
        assert request["top_logprobs"] == 5
        assert [m["role"] for m in request["messages"]] == ["system", "user"]
        spans = _spans_by_name(capsession.spans)
        assert_session_on_every_span(spans.values(), s.id)
        ai = spans["chat gpt-4o-mini"]
        assert (ai.attributes or {})[semconv.GEN_AI_PROVIDER_NAME] == "openai"
        assert ai.parent is not None
        assert ai.parent.span_id == spans["step classify severity"].context.span_id
        review = spans[semconv.GEN_AI_REVIEW_SPAN]
        assert [link.context.span_id for link in review.links] == [spans["step classify severity"].context.span_id]

    def test_reads_a_severity_and_its_probability(self) -> None:
        pytest.importorskip("openai")
        from openai.types.chat import ChatCompletion

        def alternative(token: str, logprob: float) -> dict[str, Any]:
            return {"token": token, "logprob": logprob, "bytes": None}

        top = [alternative("high", math.log(0.7)), alternative("critical", math.log(0.2)), alternative("High", -5.0)]
        response = ChatCompletion.model_validate(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 0,
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "High."},
                        "logprobs": {"content": [{**top[0], "top_logprobs": top}], "refusal": None},
                    }
                ],
            }
        )
        result = read_answer(response)
        assert result.label == "high"
        assert result.probability == pytest.approx(0.7 + math.exp(-5.0))
        assert result.probabilities["critical"] == pytest.approx(0.2)


class TestIntakeApp:
    """The intake's HTTP answers: 201 with the outcome, 422 naming broken rules, 400, 404."""

    def test_answers(self, capsession: CapturedSpans, trained: SeverityModel) -> None:
        import httpx

        from claims_triage.intake import make_app

        app = make_app(LocalClassifier(trained), StandInReviewer(model.load_examples()), "http://unused", 0.6)

        async def exchange() -> list[httpx.Response]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
                return [
                    await client.post("/claims", json={**VALID, "line": "marine"}),
                    await client.post("/claims", content=b"{not json"),
                    await client.get("/claims"),
                ]

        invalid, malformed, wrong_route = asyncio.run(exchange())
        assert invalid.status_code == 422
        assert "line must be one of" in invalid.json()["error"]
        assert malformed.status_code == 400
        assert wrong_route.status_code == 404


class TestRecords:
    """The claims and reserves are audited models: each write lands in the audit log with the span
    of the step that made it (records.py), and the span event carries the values (a demo setting)."""

    @pytest.fixture
    def database(self, tmp_path: Path) -> Iterator[Any]:
        from claims_triage.records import ClaimsDatabase

        database = ClaimsDatabase(f"sqlite:///{tmp_path / 'claims.sqlite3'}")
        try:
            yield database
        finally:
            database.close()

    @staticmethod
    def _audit_rows(database: Any) -> list[dict[str, Any]]:
        from claims_triage.records import AUDIT_LOG

        with database.engine.connect() as conn:
            return [dict(row) for row in conn.execute(select(AUDIT_LOG).order_by(AUDIT_LOG.c.seq)).mappings()]

    def test_each_step_writes_the_claim_under_its_own_span(
        self, capsession: CapturedSpans, trained: SeverityModel, database: Any
    ) -> None:
        from claims_triage.records import Claim as ClaimRow
        from claims_triage.records import IntakeRecords

        with session() as s:
            outcome = asyncio.run(
                triage(
                    {**VALID, "description": AMBIGUOUS[0]},
                    classifier=LocalClassifier(trained),
                    reviewer=StandInReviewer(model.load_examples()),
                    reserve_funds=_reserve,
                    records=IntakeRecords(database),
                )
            )
        steps = {span.context.span_id: span.name for span in capsession.spans if span.name.startswith("step ")}
        rows = self._audit_rows(database)
        made = [(steps.get(int(row["span_id"], 16)), row["change_type"], row["changed_fields"]) for row in rows]
        assert made == [
            ("step validate claim", "insert", list(_CLAIM_COLUMNS)),
            ("step classify severity", "update", ["severity", "confidence"]),
            ("step human review", "update", ["status"]),
            ("step human review", "update", ["status"]),
            ("step reserve funds", "update", ["status", "reserve_id"]),
        ]
        assert {row["session_id"] for row in rows} == {s.id}
        assert [row["seq"] for row in rows] == [1, 2, 3, 4, 5]
        classified = rows[1]
        assert classified["previous_values"] == {"severity": None, "confidence": None}
        assert classified["new_values"] == {"severity": outcome.severity, "confidence": round(outcome.confidence, 4)}
        assert [row["new_values"]["status"] for row in rows[2:]] == ["in_review", "reviewed", "reserved"]
        with database.sessions() as orm:
            claim = orm.get(ClaimRow, outcome.claim.id)
            assert claim is not None
            assert (claim.status, claim.severity, claim.reserve_id) == ("reserved", outcome.severity, "R-00001")
            assert claim.amount == Decimal("2400.00")
            assert claim.session_id == s.id
        # The span event of each change carries its values too: the demo records them in spans.
        (event,) = [
            e for e in capsession.named("step classify severity")[0].events if e.name == semconv.DB_CHANGE_EVENT
        ]
        attributes = dict(event.attributes or {})
        assert attributes[semconv.DB_COLLECTION_NAME] == "claims"
        assert json.loads(str(attributes[semconv.DB_NEW_VALUES])) == classified["new_values"]

    def test_the_ledger_writes_the_reserve_in_its_step(self, capsession: CapturedSpans, database: Any) -> None:
        from claims_triage.ledger import Ledger, make_app

        body = json.dumps({"claim_id": "CL-1", "policy": "P-1042", "severity": "high", "amount": 38500}).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/reserves",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        }
        statuses: list[str] = []
        answer = b"".join(make_app(Ledger(database))(environ, lambda status, headers: statuses.append(status)))
        assert statuses == ["201 Created"]
        reserve_id = json.loads(answer)["reserve_id"]
        (row,) = self._audit_rows(database)
        (step_span,) = capsession.named("step record reserve")
        assert int(row["span_id"], 16) == step_span.context.span_id
        assert (row["table_name"], row["change_type"]) == ("reserves", "insert")
        assert json.loads(row["record_id"]) == {"id": reserve_id}
        assert row["new_values"] == {
            "id": reserve_id,
            "claim_id": "CL-1",
            "policy": "P-1042",
            "severity": "high",
            "amount": "38500.00",
        }

    def test_services_starting_together_create_the_schema_once(self, tmp_path: Path) -> None:
        """Both services create what is missing at start-up, at the same moment in the demo."""
        from claims_triage.records import create_schema

        url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
        engines = [create_engine(url, connect_args={"timeout": 30}) for _ in range(6)]
        errors: list[BaseException] = []
        barrier = threading.Barrier(len(engines))

        def start(engine: Any) -> None:
            barrier.wait()
            try:
                create_schema(engine)
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=start, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for engine in engines:
            engine.dispose()
        assert not errors


_CLAIM_COLUMNS = ("id", "policy", "line", "amount", "description", "severity", "confidence", "status", "reserve_id")
