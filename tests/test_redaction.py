"""Redaction: detectors, key rules, callbacks and caps; and, at the exporter, on real spans (ours, a
plain third-party tracer, the contrib ``requests`` instrumentation over loopback) and log records.

Spans are checked where they leave the process: an ``InMemorySpanExporter`` behind a
``SimpleSpanProcessor``, one added before redaction was installed (an application's exporter)
and one after, on a local ``TracerProvider`` set up with the helper ``configure()`` uses.
"""

from __future__ import annotations

import http.server
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ConcurrentMultiSpanProcessor, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, Status, StatusCode

import sessiontrace
from sessiontrace import semconv
from sessiontrace._log import reset_warnings
from sessiontrace.config import ConfigError, configure
from sessiontrace.processors import SessionSpanProcessor
from sessiontrace.redaction import (
    DEFAULT_ALLOW_KEYS,
    DEFAULT_DENY_KEYS,
    DENIED,
    DETECTORS,
    FAILED,
    RedactingSpanProcessor,
    Redactor,
    _detectors,
    add_span_processor_first,
    iban_checksum,
    install_log_redaction,
    install_redaction,
    luhn,
)

SESSION_ID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def scan(text: str) -> str:
    return Redactor().redact_text(text)


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    reset_warnings()
    yield
    reset_warnings()


class TestDetectors:
    """Each built-in detector replaces what it finds with ``[REDACTED:<name>]``, and leaves near
    misses (failed checksums, ids that merely look like numbers) alone."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("mail alice.smith+x@mail.example.co.uk now", "mail [REDACTED:email] now"),
            ("?email=alice@example.com&x=1", "?email=[REDACTED:email]&x=1"),
            ("call +1 415-555-0132.", "call [REDACTED:phone]."),
            ("call +44 20 7946 0958 today", "call [REDACTED:phone] today"),
            ("call (415) 555-0132 now", "call [REDACTED:phone] now"),
            ("call 415.555.0132 now", "call [REDACTED:phone] now"),
            ("uk 020 7946 0958 x", "uk [REDACTED:phone] x"),
            ("visa 4111 1111 1111 1111 exp 12/27", "visa [REDACTED:card] exp 12/27"),
            ("mc 5500-0000-0000-0004.", "mc [REDACTED:card]."),
            ("amex 378282246310005", "amex [REDACTED:card]"),
            ("iban DE89 3704 0044 0532 0130 00 ok", "iban [REDACTED:iban] ok"),
            ("iban GB82WEST12345698765432", "iban [REDACTED:iban]"),
            (
                "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
                "jwt [REDACTED:jwt] end",
            ),
            ("key sk-proj-abcdefghijklmnopqrstuvwxyz123456 end", "key [REDACTED:api_key] end"),
            ("aws AKIAIOSFODNN7EXAMPLE end", "aws [REDACTED:api_key] end"),
            ("gh ghp_abcdefghijklmnopqrstuvwxyz0123456789 end", "gh [REDACTED:api_key] end"),
            ("slack xoxb-123456789012-abcdefghij end", "slack [REDACTED:api_key] end"),
            ("google AIzaSyA1234567890abcdefghijklmnopqrstuv end", "google [REDACTED:api_key] end"),
            ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc end", "stripe [REDACTED:api_key] end"),
            ("password=hunter22 and", "password=[REDACTED:secret] and"),
            ('{"api_key": "0123456789abcdef0123"}', '{"api_key": "[REDACTED:secret]"}'),
            ("Authorization: Bearer abc.def.ghi123", "Authorization: [REDACTED:secret]"),
            ("db.password = s3cr3t!value;", "db.password = [REDACTED:secret];"),
            ("/cb?access_token=abcdef123456&state=1", "/cb?access_token=[REDACTED:secret]&state=1"),
            ("ssn 123-45-6789 x", "ssn [REDACTED:ssn] x"),
            ("nino AB 12 34 56 C.", "nino [REDACTED:nino]."),
            ("nino JG103759A", "nino [REDACTED:nino]"),
        ],
    )
    def test_true_positives(self, text: str, expected: str) -> None:
        assert scan(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "card 4111 1111 1111 1112 fails Luhn",
            "iban DE88 3704 0044 0532 0130 00 fails mod 97",
            f"session {SESSION_ID} looks hex-ish",
            f"trace {TRACE_ID} span 00f067aa0ba902b7",
            "date 2024-01-15 10:30, policy 2024-118, version 3.2.1, error 502",
            "ip 192.168.100.200 and 10.0.0.12",
            "epoch ms 1718035200000 and order 9876543210987",
            "max_tokens=100000 input_tokens: 123456",
            "ssn 666-45-6789 and 123-00-6789 are never issued",
            "nino GB123456C and DA123456C are invalid prefixes",
            "Note: something important happened",
            "https://example.com/a/b?q=search+terms",
            "mailto: user at example dot com",
            "short 5551234",
        ],
    )
    def test_near_misses_are_kept(self, text: str) -> None:
        assert scan(text) == text

    def test_markers_are_typed(self) -> None:
        assert set(DETECTORS) == {"email", "jwt", "api_key", "secret", "card", "ssn", "phone", "iban", "nino"}
        assert scan("a bob@example.com b 4111111111111111") == "a [REDACTED:email] b [REDACTED:card]"

    def test_several_in_one_text(self) -> None:
        text = "Hi, I'm bob@example.com, card 4111 1111 1111 1111, call +1 415-555-0132 or ssn 123-45-6789."
        assert scan(text) == (
            "Hi, I'm [REDACTED:email], card [REDACTED:card], call [REDACTED:phone] or ssn [REDACTED:ssn]."
        )

    def test_only_enabled_detectors_run(self) -> None:
        redactor = Redactor(detectors=["email"])
        assert redactor.redact_text("bob@example.com 4111111111111111") == "[REDACTED:email] 4111111111111111"

    def test_unknown_detector_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="no_such"):
            Redactor(detectors=["email", "no_such"])

    def test_checksums(self) -> None:
        assert luhn("4111111111111111")
        assert not luhn("4111111111111112")
        assert iban_checksum("DE89370400440532013000")
        assert not iban_checksum("DE88370400440532013000")

    def test_unchanged_text_is_the_same_object(self) -> None:
        text = "nothing to see here, only prose and the number 42"
        assert scan(text) is text


# Every text of the detector tests above, for the engine comparisons below.
_TRUE_POSITIVES = [text for text, _ in TestDetectors.test_true_positives.pytestmark[0].args[1]]  # type: ignore[attr-defined]
_NEAR_MISSES = list(TestDetectors.test_near_misses_are_kept.pytestmark[0].args[1])  # type: ignore[attr-defined]
_PADDING = 'Plain prose with a date 2024-03-12 10:30, an amount of $1,250.00 and a JSON key "role": "user". '
_FRAGMENTS = [
    *_TRUE_POSITIVES,
    *_NEAR_MISSES,
    *"@ eyJ sk- sk_ AKIA ASIA ghp_ github_ xoxb- AIza password PassWord api_key token Auth : = :// \" '".split(),  # noqa: SIM905
    *"+ ( ) - . _ 0 1 4 9 12 415 555-0132 4111 1111 AB GB DE89 Z a é 中 😀 0123456789 2024-01-15".split(),  # noqa: SIM905
    *(" ", "  ", "    ", "\t", "\n", "\u212a", "\u0130", "\u00a0", "Bearer ", "Basic ", "x" * 30),
    # Card runs next to other digits, and JSON escapes (captured content is JSON text).
    *("4111 1111 1111 1111 12/27", "4111111111111111 123", "2 ", "09 28", "\\n", "\\t", '\\"', "\\\\", "o'"),
    # Dots, slashes, look-alike digits and blanks, spaced SSNs, addresses in other scripts.
    *("4111.1111.1111.1111", "3.141592653589793", "0171/1234567", "+49 30/1234567", "/", "12/03/2024"),
    *("\u202f", "\u2007", "\u3000", "\uff14", "\uff11", "\uff10", "\uff0d", "\uff0b", "\uff14\uff11\uff11\uff11"),
    *("123 45 6789", "45 ", "josé@exämple.com", "用户@例子.中国", "अजय@डाटा.भारत", "\u0301", "电话"),
    # Escaped and full-width "@" and dots, punycode, a JWT header cut by a cap, cue words, CJK prose.
    *("\\u0040", "\\u002e", "alice\\u0040example", "\uff20", "\uff0e", ".xn--p1ai", "xn--", "SSN ", "请联系"),
    *("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9", "…[truncated 9 chars]", "Rechnung ", "Tel.-Nr. ", "Nr. ", "谢谢"),
]


def _both(scanner: _detectors.Scanner, text: str) -> tuple[str, str]:
    """The text through the scanner's own path and through the pure re reference."""
    return scanner.scan(text), scanner.scan_re(text)


class TestEngines:
    """The hyperscan candidate finder (long strings) and the clean-string cache (short ones) give
    exactly what the pure ``re`` scan gives: the same markers at the same places, nothing missed."""

    scanner = _detectors.Scanner()

    def test_hyperscan_is_used_for_long_strings(self) -> None:
        assert _detectors.FAST_ENGINE, "hyperscan is a dependency: the fast path must be importable here"
        assert self.scanner.engine == "hyperscan"
        assert _detectors.Scanner(engine="re").engine == "re"
        with pytest.raises(ValueError, match="engine"):
            _detectors.Scanner(engine="pcre")  # type: ignore[arg-type]

    @pytest.mark.parametrize("text", _TRUE_POSITIVES + _NEAR_MISSES)
    def test_detector_texts_long_and_short(self, text: str) -> None:
        for variant in (text, _PADDING * 3 + text, text + _PADDING * 3, _PADDING * 2 + text + " " + text + _PADDING):
            fast, reference = _both(self.scanner, variant)
            assert fast == reference, variant
        if len(text) <= 256:
            assert self.scanner.scan(text) == self.scanner.scan(text) == self.scanner.scan_re(text)

    def test_benchmark_prompts(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import importlib
        from pathlib import Path

        monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
        bench_redaction = importlib.import_module("bench_redaction")
        for personal in (True, False):
            text = bench_redaction.prompt(personal)
            fast, reference = _both(self.scanner, text)
            assert fast == reference
            assert ("[REDACTED:" in fast) is personal

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=40), st.booleans())
    def test_random_texts(self, fragments: list[str], pad: bool) -> None:
        text = "".join(fragments)
        if pad:
            text = _PADDING * 3 + text
        fast, reference = _both(self.scanner, text)
        assert fast == reference

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=40))
    def test_every_match_is_a_candidate(self, fragments: list[str]) -> None:
        """The finder's list covers every place where the combined pattern matches (for secret,
        where its validator accepts the match), not just the ones the scan happens to visit."""
        text = _detectors.fold(_PADDING * 3 + "".join(fragments))  # what scan() gives the finder
        scanner = self.scanner
        assert scanner._finder is not None
        assert scanner._pattern is not None
        candidates = set(scanner._finder.find(text))
        for at in range(len(text)):
            match = scanner._pattern.match(text, at)
            if match is None:
                continue
            if match.lastgroup == "secret" and _detectors._secret(text, *match.span()) is None:
                continue
            assert at in candidates, (at, match.lastgroup, text[max(0, at - 20) : at + 20])

    @pytest.mark.parametrize(
        "detectors", [["email"], ["secret"], ["card", "phone"], ["iban", "nino", "ssn"], ["jwt", "api_key"]]
    )
    def test_detector_subsets(self, detectors: list[str]) -> None:
        scanner = _detectors.Scanner(detectors)
        for text in _TRUE_POSITIVES + _NEAR_MISSES:
            long = _PADDING * 3 + text + " " + text
            assert scanner.scan(long) == scanner.scan_re(long)

    def test_candidate_expressions_read_the_same_both_ways(self) -> None:
        """Each backward expression (what hyperscan runs, on the reversed text) matches exactly the
        reversals of what its forward form (what the comments and reviews read) matches."""
        import random

        rng = random.Random(7)
        secret = {forward for forward, _, _ in _detectors.candidate_expressions(["secret"])}
        alphabet = "0123456789 ().-/+_:=\"'\tABCDKSZIaeghiksoprtuwxyzJ@é"
        for forward, backward, k in _detectors.candidate_expressions(_detectors.DETECTORS):
            flags = re.IGNORECASE if forward in secret else 0
            ahead, behind = re.compile(forward, flags), re.compile(backward, flags)
            for _ in range(3000):
                sample = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
                assert bool(ahead.fullmatch(sample)) == bool(behind.fullmatch(sample[::-1])), (forward, sample)
            assert 0 <= k <= len("authorization") + 4

    def test_kelvin_sign_takes_the_re_path(self) -> None:
        # "apiKey" with U+212A KELVIN SIGN: the validator lowers it to "apikey"; hyperscan could not.
        text = _PADDING * 3 + "api\u212aey=abcdef123456 end"
        fast, reference = _both(self.scanner, text)
        assert fast == reference
        assert "[REDACTED:secret]" in fast

    def test_non_ascii_text(self) -> None:
        text = "Grüße 😀 " * 40 + "schreib an jörg@example.com oder ruf +49 30 1234 5678 an; 中文 4111 1111 1111 1111"
        fast, reference = _both(self.scanner, text)
        assert fast == reference
        assert fast.count("[REDACTED:") == 3

    def test_hyperscan_failure_falls_back(self, monkeypatch: pytest.MonkeyPatch) -> None:
        scanner = _detectors.Scanner()
        assert scanner._finder is not None

        def broken(self: object, text: str) -> list[int]:
            raise RuntimeError("scratch in use")

        monkeypatch.setattr(_detectors._Finder, "find", broken)
        text = _PADDING * 3 + "mail bob@example.com"
        assert scanner.scan(text) == scanner.scan_re(text) == text.replace("bob@example.com", "[REDACTED:email]")

    def test_threads(self) -> None:
        """One hyperscan scratch space per thread: concurrent scans neither fail nor mix results."""
        from concurrent.futures import ThreadPoolExecutor

        texts = [_PADDING * 3 + f"user{n}@example.com card 4111 1111 1111 1111 n={n}" for n in range(64)]
        expected = [self.scanner.scan_re(text) for text in texts]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(5):
                assert list(pool.map(self.scanner.scan, texts)) == expected

    def test_only_clean_short_strings_are_remembered(self) -> None:
        scanner = _detectors.Scanner()
        assert scanner.scan("POST /v1/chat/completions") == "POST /v1/chat/completions"
        assert scanner.scan("mail bob@example.com") == "mail [REDACTED:email]"
        assert scanner._clean == {"POST /v1/chat/completions"}  # never the personal data
        assert scanner.scan("POST /v1/chat/completions") == "POST /v1/chat/completions"

    def test_luhn_keeps_reading_unicode_digits(self) -> None:
        assert luhn("\u0664\u0661\u0661\u0661" + "1" * 12)  # Arabic-Indic 4111 then 1s, as int() reads them
        with pytest.raises(ValueError, match="invalid literal"):
            luhn("41x1")


class TestKeys:
    """Deny keys replace a whole value, allow keys are never touched, deny wins over allow."""

    def test_default_deny(self) -> None:
        redactor = Redactor()
        assert redactor.redact("http.request.header.authorization", ("Bearer abc",)) == DENIED
        assert redactor.redact("db.password", 1234) == DENIED
        assert redactor.redact("HTTP.Request.Header.Cookie", "a=b") == DENIED
        assert redactor.redact("oauth.access_token", "x") == DENIED

    def test_token_counts_are_not_secrets(self) -> None:
        redactor = Redactor()
        assert redactor.redact(semconv.GEN_AI_USAGE_INPUT_TOKENS, 1234) == 1234
        assert redactor.redact("gen_ai.request.max_tokens", 100000) == 100000

    def test_session_and_user_ids_are_never_scrubbed_by_default(self) -> None:
        redactor = Redactor()
        assert redactor.redact(semconv.SESSION_ID, SESSION_ID) == SESSION_ID
        assert redactor.redact(semconv.SESSION_PREVIOUS_ID, SESSION_ID) == SESSION_ID
        # Decided: user.id is the "who" of the audit trail, stamped on purpose, so it is allowed even
        # when it is an email. Deny it explicitly to change that (next test).
        assert redactor.redact(semconv.USER_ID, "alice@example.com") == "alice@example.com"

    def test_no_default_deny_pattern_hits_our_own_names(self) -> None:
        redactor = Redactor()
        for entry in semconv.NAMES:
            if "attribute" in entry.kind:
                assert redactor.redact(entry.name, 7) == 7, entry.name
        for key in DEFAULT_ALLOW_KEYS:
            assert redactor.redact(key.replace("*", "x"), "bob@example.com") == "bob@example.com", key

    def test_deny_wins_over_allow(self) -> None:
        redactor = Redactor(deny_keys=(*DEFAULT_DENY_KEYS, "user.id"))
        assert redactor.redact(semconv.USER_ID, "alice@example.com") == DENIED
        assert redactor.redact(semconv.SESSION_ID, SESSION_ID) == SESSION_ID

    def test_custom_allow_skips_scanning(self) -> None:
        redactor = Redactor(allow_keys=("app.contact_*",))
        assert redactor.redact("app.contact_email", "bob@example.com") == "bob@example.com"
        assert redactor.redact("app.other", "bob@example.com") == "[REDACTED:email]"

    def test_non_strings_are_kept(self) -> None:
        redactor = Redactor()
        assert redactor.redact("app.count", 4111111111111111) == 4111111111111111
        assert redactor.redact("app.flags", (True, False)) == (True, False)


class TestCallbacks:
    """User callbacks see (key, value) after the detectors; a failing one fails closed, logged once."""

    def test_replacement_and_keep(self) -> None:
        seen: list[tuple[str, str]] = []

        def customer_numbers(key: str, value: str) -> str | None:
            seen.append((key, value))
            return value.replace("CUST-1234", "[REDACTED:customer]") if "CUST-" in value else None

        redactor = Redactor(callbacks=[customer_numbers])
        assert redactor.redact("app.note", "CUST-1234 bob@example.com") == "[REDACTED:customer] [REDACTED:email]"
        assert redactor.redact("app.note", "nothing") == "nothing"
        assert seen == [("app.note", "CUST-1234 [REDACTED:email]"), ("app.note", "nothing")]

    def test_raising_callback_redacts_whole_value_and_warns_once(self, caplog: pytest.LogCaptureFixture) -> None:
        def broken(key: str, value: str) -> str | None:
            raise RuntimeError("boom")

        redactor = Redactor(callbacks=[broken])
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            assert redactor.redact("app.a", "first value") == FAILED
            assert redactor.redact("app.b", "second value") == FAILED
            assert redactor.redact("app.c", ("x", "y")) == (FAILED, FAILED)
        warnings = [record for record in caplog.records if "redaction callback" in record.getMessage()]
        assert len(warnings) == 1
        assert "RuntimeError: boom" in warnings[0].getMessage()

    def test_callback_returning_a_non_string_fails_closed(self) -> None:
        redactor = Redactor(callbacks=[lambda key, value: 42])  # type: ignore[list-item,return-value]
        assert redactor.redact("app.a", "value") == FAILED


class TestSizeAndArrays:
    """Long strings are capped with a marker (a secret cut by the cap is still removed); arrays of
    strings are redacted item by item."""

    def test_cap(self) -> None:
        redactor = Redactor(max_value_chars=100)
        value = "x" * 250
        assert redactor.redact("app.text", value) == "x" * 100 + "…[truncated 150 chars]"

    def test_secret_across_the_cap_is_removed(self) -> None:
        redactor = Redactor(max_value_chars=100)
        value = "x" * 90 + " bob@example.com " + "y" * 200
        capped = redactor.redact("app.text", value)
        assert "bob" not in capped
        assert "@" not in capped
        assert capped.startswith("x" * 90 + " [REDACTED:email]")

    def test_no_cap_and_allowed_keys_are_uncapped(self) -> None:
        value = "x" * 100_000
        assert Redactor(max_value_chars=None).redact("app.text", value) is value
        assert Redactor(max_value_chars=10).redact(semconv.SESSION_ID, value) is value

    def test_arrays(self) -> None:
        redactor = Redactor()
        assert redactor.redact("app.to", ["bob@example.com", "plain text", "x"]) == (
            "[REDACTED:email]",
            "plain text",
            "x",
        )
        clean = ("plain text", "more text")
        assert redactor.redact("app.to", clean) is clean

    def test_attributes_copy_only_when_needed(self) -> None:
        redactor = Redactor()
        assert redactor.redact_attributes({"a": "plain", "b": 1}) is None
        assert redactor.redact_attributes({"a": "bob@example.com", "b": 1}) == {"a": "[REDACTED:email]", "b": 1}


# --- real spans, checked at the exporter ----------------------------------------------------------------


class Pipeline:
    def __init__(self, redactor: Redactor | None = None) -> None:
        self.provider = TracerProvider()
        self.provider.add_span_processor(SessionSpanProcessor())
        self.before = InMemorySpanExporter()  # the application's exporter, there before redaction
        self.provider.add_span_processor(SimpleSpanProcessor(self.before))
        self.processor = install_redaction(self.provider, redactor or Redactor())
        self.after = InMemorySpanExporter()  # an exporter added later
        self.provider.add_span_processor(SimpleSpanProcessor(self.after))

    def exported(self) -> list[ReadableSpan]:
        before, after = self.before.get_finished_spans(), self.after.get_finished_spans()
        assert [span.name for span in before] == [span.name for span in after]
        for one, other in zip(before, after, strict=True):
            assert dict(one.attributes or {}) == dict(other.attributes or {})
        return list(after)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    pipe = Pipeline()
    yield pipe
    pipe.provider.shutdown()


class TestSpanProcessor:
    """``install_redaction`` puts the processor first: every exporter, even one added before it,
    receives redacted spans; the application's own span object is left as it was."""

    def test_first_in_line(self, pipeline: Pipeline) -> None:
        processors = pipeline.provider._active_span_processor._span_processors
        assert isinstance(processors[0], RedactingSpanProcessor)

    def test_attributes_events_links_name_status(self, pipeline: Pipeline) -> None:
        tracer = pipeline.provider.get_tracer("app")
        with tracer.start_as_current_span("linked") as linked:
            pass
        link = Link(linked.get_span_context(), {"note": "from bob@example.com"})
        with tracer.start_as_current_span("lookup bob@example.com", links=[link]) as span:
            span.set_attribute("app.query", "find card 4111 1111 1111 1111")
            span.set_attribute("app.count", 3)
            span.set_attribute("http.request.header.authorization", ("Bearer abc",))
            span.add_event("note", {"text": "call +1 415-555-0132"})
            span.record_exception(ValueError("no user alice@example.com"))
            span.set_status(Status(StatusCode.ERROR, "no user alice@example.com"))
        exported = pipeline.exported()[-1]
        assert exported.name == "lookup [REDACTED:email]"
        assert exported.attributes is not None
        assert exported.attributes["app.query"] == "find card [REDACTED:card]"
        assert exported.attributes["app.count"] == 3
        assert exported.attributes["http.request.header.authorization"] == DENIED
        note, exception = exported.events
        assert note.attributes == {"text": "call [REDACTED:phone]"}
        assert exception.attributes is not None
        assert exception.attributes["exception.message"] == "no user [REDACTED:email]"
        assert "alice" not in str(exception.attributes["exception.stacktrace"])
        assert exported.links[0].attributes == {"note": "from [REDACTED:email]"}
        assert exported.status.description == "no user [REDACTED:email]"
        # The application's live span object still holds its own values.
        assert span.name == "lookup bob@example.com"

    def test_session_id_survives_and_is_stamped(self, pipeline: Pipeline) -> None:
        tracer = pipeline.provider.get_tracer("app")
        with sessiontrace.session(user_id="alice@example.com") as current, tracer.start_as_current_span("work") as span:
            span.set_attribute("app.mentions", f"session {current.id} by bob@example.com")
        exported = pipeline.exported()[-1]
        assert exported.attributes is not None
        assert exported.attributes[semconv.SESSION_ID] == current.id
        assert exported.attributes[semconv.USER_ID] == "alice@example.com"
        assert exported.attributes["app.mentions"] == f"session {current.id} by [REDACTED:email]"

    def test_third_party_tracer(self, pipeline: Pipeline) -> None:
        tracer = pipeline.provider.get_tracer("some.database.driver", "9.9")
        with tracer.start_as_current_span("SELECT users") as span:
            span.set_attribute("db.query.text", "SELECT * FROM users WHERE email = 'bob@example.com'")
        exported = pipeline.exported()[-1]
        assert exported.instrumentation_scope is not None
        assert exported.instrumentation_scope.name == "some.database.driver"
        assert exported.attributes == {"db.query.text": "SELECT * FROM users WHERE email = '[REDACTED:email]'"}

    def test_requests_instrumentation_over_loopback(self, pipeline: Pipeline) -> None:
        from opentelemetry.instrumentation.requests import RequestsInstrumentor

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        instrumentor = RequestsInstrumentor()
        instrumentor.instrument(tracer_provider=pipeline.provider)
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/search?email=alice@example.com&page=2"
            response = requests.get(url, timeout=10, proxies={"http": "", "https": ""})
            assert response.status_code == 200
        finally:
            instrumentor.uninstrument()
            server.shutdown()
            server.server_close()
            thread.join(5)
        (client,) = [span for span in pipeline.exported() if span.instrumentation_scope is not None]
        assert client.instrumentation_scope is not None
        assert client.instrumentation_scope.name == "opentelemetry.instrumentation.requests"
        attributes = dict(client.attributes or {})
        urls = [attributes[key] for key in ("url.full", "http.url") if key in attributes]
        assert urls, attributes
        for value in urls:
            assert value.endswith("/search?email=[REDACTED:email]&page=2"), value
        assert "alice" not in repr(attributes)

    def test_clean_spans_are_not_copied(self, pipeline: Pipeline) -> None:
        tracer = pipeline.provider.get_tracer("app")
        with tracer.start_as_current_span("clean") as span:
            span.set_attribute("app.text", "nothing personal here")
        exported = pipeline.exported()[-1]
        assert exported._attributes is span._attributes  # type: ignore[attr-defined]

    def test_disabled_processor_passes_spans_through(self, pipeline: Pipeline) -> None:
        assert pipeline.processor is not None
        install_redaction(pipeline.provider, None)
        assert pipeline.processor.redactor is None
        with pipeline.provider.get_tracer("app").start_as_current_span("bob@example.com"):
            pass
        assert pipeline.exported()[-1].name == "bob@example.com"

    def test_unexpected_failure_fails_closed(
        self, pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("bug")

        monkeypatch.setattr(Redactor, "redact_attributes", broken)
        tracer = pipeline.provider.get_tracer("app")
        with caplog.at_level(logging.WARNING, logger="sessiontrace"), tracer.start_as_current_span("work") as span:
            span.set_attribute("app.text", "bob@example.com")
            span.set_attribute("app.count", 2)
        exported = pipeline.exported()[-1]
        assert exported.attributes == {"app.text": FAILED, "app.count": 2}
        assert exported.name == FAILED
        assert any("redacting a span failed" in record.getMessage() for record in caplog.records)

    def test_cannot_go_first_appends_and_warns_once(self, caplog: pytest.LogCaptureFixture) -> None:
        provider = TracerProvider(active_span_processor=ConcurrentMultiSpanProcessor())
        with caplog.at_level(logging.WARNING, logger="sessiontrace"):
            assert add_span_processor_first(provider, RedactingSpanProcessor()) is False
            assert add_span_processor_first(provider, RedactingSpanProcessor()) is False
        assert sum("cannot put" in record.getMessage() for record in caplog.records) == 1
        provider.shutdown()

    def test_installing_twice_updates_the_redactor(self, pipeline: Pipeline) -> None:
        strict = Redactor(deny_keys=("app.*",))
        assert install_redaction(pipeline.provider, strict) is pipeline.processor
        processors = pipeline.provider._active_span_processor._span_processors
        assert sum(isinstance(p, RedactingSpanProcessor) for p in processors) == 1
        with pipeline.provider.get_tracer("app").start_as_current_span("work") as span:
            span.set_attribute("app.text", "plain")
        assert (pipeline.exported()[-1].attributes or {})["app.text"] == DENIED


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class TestLogRecords:
    """OpenTelemetry log records are redacted before export: string and map bodies, attributes."""

    def test_body_and_attributes(self) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

        provider = LoggerProvider()
        exporter = InMemoryLogRecordExporter()
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))  # the application's, first
        assert install_log_redaction(Redactor(), provider) is not None
        logger = provider.get_logger("tests.redaction.app")
        try:
            logger.emit(
                body="refund for bob@example.com to card 4111 1111 1111 1111",
                attributes={"who": "a@b.io", semconv.SESSION_ID: SESSION_ID, "db.password": "x"},
            )
            logger.emit(body={"user": {"email": "bob@example.com", "age": 40}, "note": "call 415-555-0132"})
        finally:
            provider.shutdown()
        text, structured = (record.log_record for record in exporter.get_finished_logs())
        assert text.body == "refund for [REDACTED:email] to card [REDACTED:card]"
        assert dict(text.attributes or {}) == {
            "who": "[REDACTED:email]",
            semconv.SESSION_ID: SESSION_ID,
            "db.password": DENIED,
        }
        assert structured.body == {"user": {"email": "[REDACTED:email]", "age": 40}, "note": "call [REDACTED:phone]"}


class TestConfigure:
    """``configure(redaction=..., capture_content=...)`` and the ``SESSIONTRACE_REDACT*`` variables."""

    @pytest.fixture
    def provider(self) -> Iterator[TracerProvider]:
        provider = TracerProvider()
        yield provider
        configure(exporter="none")  # back to the process's own provider and default policies
        provider.shutdown()

    def _ours(self, provider: TracerProvider) -> RedactingSpanProcessor:
        first = provider._active_span_processor._span_processors[0]
        assert isinstance(first, RedactingSpanProcessor)
        return first

    def test_on_by_default_and_first(self, provider: TracerProvider) -> None:
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # the application's, before configure()
        configuration = configure(tracer_provider=provider, exporter="none", environ={})
        assert configuration.redactor is not None
        assert self._ours(provider).redactor is configuration.redactor
        with provider.get_tracer("app").start_as_current_span("x") as span:
            span.set_attribute("app.text", "bob@example.com")
        assert (exporter.get_finished_spans()[0].attributes or {})["app.text"] == "[REDACTED:email]"

    def test_environment(self, provider: TracerProvider) -> None:
        configuration = configure(
            tracer_provider=provider,
            exporter="none",
            environ={
                "SESSIONTRACE_REDACT_DENY_KEYS": "user.id, app.internal.*",
                "SESSIONTRACE_REDACT_ALLOW_KEYS": "app.contact",
                "SESSIONTRACE_REDACT_MAX_CHARS": "64",
            },
        )
        redactor = configuration.redactor
        assert redactor is not None
        assert redactor.redact(semconv.USER_ID, "u-1") == DENIED
        assert redactor.redact("app.internal.x", "y") == DENIED
        assert redactor.redact("app.contact", "bob@example.com") == "bob@example.com"
        assert redactor.redact(semconv.SESSION_ID, SESSION_ID) == SESSION_ID
        assert redactor.redact("app.text", "x" * 100).endswith("…[truncated 36 chars]")

    def test_off_by_variable_or_argument(self, provider: TracerProvider) -> None:
        assert configure(tracer_provider=provider, exporter="none", environ={}).redactor is not None
        configuration = configure(tracer_provider=provider, exporter="none", environ={"SESSIONTRACE_REDACT": "false"})
        assert configuration.redactor is None
        assert self._ours(provider).redactor is None  # the processor stays, switched off
        assert configure(tracer_provider=provider, exporter="none", redaction=False, environ={}).redactor is None

    def test_custom_redactor_wins(self, provider: TracerProvider) -> None:
        mine = Redactor(detectors=["email"])
        configuration = configure(
            tracer_provider=provider, exporter="none", redaction=mine, environ={"SESSIONTRACE_REDACT": "false"}
        )
        assert configuration.redactor is mine
        assert self._ours(provider).redactor is mine

    def test_malformed_variables(self, provider: TracerProvider) -> None:
        with pytest.raises(ConfigError, match="SESSIONTRACE_REDACT"):
            configure(tracer_provider=provider, exporter="none", environ={"SESSIONTRACE_REDACT": "maybe"})
        with pytest.raises(ConfigError, match="SESSIONTRACE_REDACT_MAX_CHARS"):
            configure(tracer_provider=provider, exporter="none", environ={"SESSIONTRACE_REDACT_MAX_CHARS": "-1"})

    def test_capture_content(self, provider: TracerProvider) -> None:
        from sessiontrace.ai import content

        try:
            configure(tracer_provider=provider, exporter="none", capture_content=True, environ={})
            assert content.capture_content() is True
            configure(tracer_provider=provider, exporter="none", capture_content=False, environ={})
            assert content.capture_content() is False
        finally:
            content.set_capture_content(None)
