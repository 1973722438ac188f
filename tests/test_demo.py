"""``sessiontrace demo`` runs the claims-triage example: two real services in their own processes,
two claims, and each claim's session path with its workflow steps, AI call and confidence, and the
database changes each step made (audited models, SQLite by default), with their diffs."""

from __future__ import annotations

import itertools
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessiontrace import semconv
from sessiontrace.records import StoredSpan
from sessiontrace.store import SpanStore

UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
CONFIDENCE = re.compile(r"chat claims-severity-lr .* confidence (\d\.\d\d) \((low|medium|high|critical)\)")
STEPS = ("step validate claim", "step classify severity", "step reserve funds", "step record reserve")
CLAIM_ID = re.compile(r"CL-[0-9A-F]{8}")
RESERVE_ID = re.compile(r"R-[0-9A-F]{8}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    home = tmp_path_factory.mktemp("demo")
    store_path = home / "spans.sqlite3"
    script = Path(sys.executable).parent / "sessiontrace"
    result = subprocess.run(
        [str(script), "--store", str(store_path), "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "NO_COLOR": "1", "HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    return store_path, result.stdout


def _sections(out: str) -> tuple[str, str]:
    """The clear-cut claim's path, then the ambiguous claim's."""
    clear = out.index("clear-cut claim ")
    ambiguous = out.index("ambiguous claim ")
    assert clear < ambiguous
    return out[clear:ambiguous], out[ambiguous:]


def _session_ids(out: str) -> list[str]:
    return re.findall(r"^session\.id: (\S+)$", out, re.MULTILINE)


def _between(text: str, start: str, end: str | None = None) -> str:
    """The lines from the one containing ``start`` up to (not including) the one containing ``end``."""
    begin = text.index(start)
    return text[begin : text.index(end, begin) if end else None]


def _audit_rows(audit_path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(f"file:{audit_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in db.execute("SELECT * FROM audit_log ORDER BY seq")]
    finally:
        db.close()


def _spans(store_path: Path, session_id: str) -> list[StoredSpan]:
    store = SpanStore(store_path)
    try:
        return store.session_spans(session_id)
    finally:
        store.close()


class TestDemo:
    """The demo prints both session ids (the clear-cut claim's first), then both paths."""

    def test_prints_the_session_ids_first(self, demo: tuple[Path, str]) -> None:
        store_path, out = demo
        first_line = out.splitlines()[0]
        ids = _session_ids(out)
        assert first_line == f"session.id: {ids[0]}"
        assert len(ids) == 2
        assert ids[0] != ids[1]
        assert all(UUID7.fullmatch(session_id) for session_id in ids), ids
        for session_id in ids:
            assert f"sessiontrace --store {store_path} path {session_id}" in out  # not the default store

    def test_clear_cut_claim_is_decided_by_the_model(self, demo: tuple[Path, str]) -> None:
        clear, _ = _sections(demo[1])
        for expected in ("workflow claims-triage", *STEPS, "POST /reserves", "[intake]", "[ledger]", "notify adjuster"):
            assert expected in clear, f"{expected!r} missing from the path:\n{clear}"
        match = CONFIDENCE.search(clear)
        assert match, clear
        assert float(match.group(1)) >= 0.6
        assert "model claims-severity-lr-" in clear
        assert "(local)" in clear
        assert "step human review" not in clear
        assert "decided by model" in clear

    def test_ambiguous_claim_waits_for_human_review(self, demo: tuple[Path, str]) -> None:
        _, ambiguous = _sections(demo[1])
        for expected in ("workflow claims-triage", *STEPS, "step human review", "POST /reserves"):
            assert expected in ambiguous, f"{expected!r} missing from the path:\n{ambiguous}"
        match = CONFIDENCE.search(ambiguous)
        assert match, ambiguous
        assert float(match.group(1)) < 0.6
        assert "running → waiting_for_human → running → succeeded" in ambiguous
        assert "gen_ai.review" in ambiguous
        assert "reviews chat claims-severity-lr" in ambiguous
        assert "stand-in-reviewer (automatic)" in ambiguous
        assert "decided by reviewer" in ambiguous
        # The path reads in workflow order.
        order = ["step validate claim", "step classify severity", "step human review", "step reserve funds"]
        assert [ambiguous.index(name) for name in order] == sorted(ambiguous.index(name) for name in order)

    def test_each_session_is_one_trace_across_both_services(self, demo: tuple[Path, str]) -> None:
        store_path, out = demo
        for session_id in _session_ids(out):
            spans = _spans(store_path, session_id)
            assert {span.service_name for span in spans} == {"intake", "ledger"}
            assert len({span.trace_id for span in spans}) == 1, "the hop to the ledger continues the trace"
            unstamped = [span.name for span in spans if span.attributes.get(semconv.SESSION_ID) != session_id]
            assert not unstamped
            assert {span.attributes.get(semconv.TRIGGER_SOURCE) for span in spans} == {"api"}
            runs = {span.attributes.get(semconv.WORKFLOW_RUN_ID) for span in spans if span.name.startswith("step ")}
            assert len(runs) == 1, "the ledger's step continues the intake's run"

    def test_ai_span_and_review_are_linked(self, demo: tuple[Path, str]) -> None:
        store_path, out = demo
        clear_id, ambiguous_id = _session_ids(out)
        (sure,) = [s for s in _spans(store_path, clear_id) if s.name == "chat claims-severity-lr"]
        spans = _spans(store_path, ambiguous_id)
        (unsure,) = [s for s in spans if s.name == "chat claims-severity-lr"]
        (review,) = [s for s in spans if s.name == semconv.GEN_AI_REVIEW_SPAN]
        assert sure.attributes[semconv.GEN_AI_PROVIDER_NAME] == "local"
        assert sure.attributes[semconv.GEN_AI_CONFIDENCE] >= 0.6 > unsure.attributes[semconv.GEN_AI_CONFIDENCE]
        assert [link.span_id for link in review.links] == [unsure.span_id]


class TestDemoChanges:
    """The claims and reserves are audited models in a SQLite file next to the store; the path
    shows each change under the step that made it, with its diff from the audit log."""

    def test_each_change_shows_under_its_step_with_its_diff(self, demo: tuple[Path, str]) -> None:
        clear, _ = _sections(demo[1])
        claim = CLAIM_ID.search(clear)
        assert claim
        key = f'{{"id": "{claim.group()}"}}'
        validate = _between(clear, "step validate claim", "step classify severity")
        assert f"• insert claims {key}" in validate
        assert 'policy: "P-1042", line: "motor", amount: "38500.00"' in validate
        assert 'status: "validated"' in validate
        classify = _between(clear, "step classify severity", "step reserve funds")
        assert re.search(
            rf'• update claims {re.escape(key)} .* severity: null → "high", confidence: null → 0\.8\d*', classify
        )
        ledger = _between(clear, "step record reserve", "notify adjuster")
        reserve = RESERVE_ID.search(ledger)
        assert reserve
        assert f'• insert reserves {{"id": "{reserve.group()}"}}' in ledger
        assert f'claim_id: "{claim.group()}"' in ledger
        # The claim is marked reserved after the ledger's insert, in the intake's step.
        assert f'status: "validated" → "reserved", reserve_id: null → "{reserve.group()}"' in ledger
        assert "(not in the audit log)" not in demo[1]

    def test_the_review_step_moves_the_claim_through_review(self, demo: tuple[Path, str]) -> None:
        _, ambiguous = _sections(demo[1])
        review = _between(ambiguous, "step human review", "step reserve funds")
        assert 'status: "validated" → "in_review"' in review
        assert 'status: "in_review" → "reviewed"' in review
        assert 'status: "reviewed" → "reserved"' in _between(ambiguous, "step reserve funds")

    def test_audit_rows_carry_the_span_of_their_step(self, demo: tuple[Path, str]) -> None:
        store_path, out = demo
        audit_path = store_path.parent / "claims-audit.sqlite3"
        assert f"audit log: {audit_path}" in out
        rows = _audit_rows(audit_path)
        for session_id in _session_ids(out):
            assert f"again: sessiontrace --store {store_path} path {session_id} --audit-db {audit_path}" in out
            spans = {span.span_id: span for span in _spans(store_path, session_id)}
            made = [
                (spans[row["span_id"]].name, row["table_name"], row["change_type"])
                for row in rows
                if row["session_id"] == session_id.replace("-", "")  # SQLAlchemy's Uuid on SQLite: 32 hex digits
            ]
            assert made[:2] == [
                ("step validate claim", "claims", "insert"),
                ("step classify severity", "claims", "update"),
            ]
            assert made[-2:] == [
                ("step record reserve", "reserves", "insert"),
                ("step reserve funds", "claims", "update"),
            ]
            assert len({spans[row["span_id"]].trace_id for row in rows if row["span_id"] in spans}) == 1
        # One hash chain over both services' writes: gap-free, each row linked to the one before.
        assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
        assert all(row["prev_hash"] == before["row_hash"] for before, row in itertools.pairwise(rows))

    def test_path_joins_the_audit_log_again(self, demo: tuple[Path, str]) -> None:
        store_path, out = demo
        clear_id = _session_ids(out)[0]
        script = Path(sys.executable).parent / "sessiontrace"
        command = [str(script), "--store", str(store_path), "path", clear_id]
        env = {"NO_COLOR": "1", "PATH": str(Path(sys.executable).parent)}
        audit = str(store_path.parent / "claims-audit.sqlite3")
        joined = subprocess.run([*command, "--audit-db", audit], capture_output=True, text=True, env=env, timeout=60)
        assert joined.returncode == 0, joined.stderr
        assert re.search(r'update claims .* severity: null → "high".*audit #\d+', joined.stdout)
        # Without the join the span events tell the same story: the demo records values in spans.
        spans_only = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert spans_only.returncode == 0, spans_only.stderr
        assert re.search(r'update claims .* severity: null → "high"', spans_only.stdout)
