"""Detector misses from the second review, each checked where a span leaves the process (an in-memory
exporter behind the SDK, redaction installed first as ``configure()`` does): card digit groups
separated by no-break spaces or dots, full-width digits, SSNs written with spaces, internationalised
email addresses, phone numbers with a slash, a JWT cut by a size cap; then addresses with a JSON-escaped
or full-width ``@``, punycode top-level domains, a JWT cut inside its header. And the other side:
everyday text (prose, dates, versions, amounts, order numbers, URLs, invoice numbers with a slash,
numbers spaced like an SSN, CJK prose next to an address) that must be exported unchanged.

Every value is exported twice: alone (a short string, the pure ``re`` path) and at the end of a
long one (the hyperscan candidate finder), since the two paths must agree."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sessiontrace import semconv
from sessiontrace._log import reset_warnings
from sessiontrace.redaction import Redactor, install_redaction

SESSION_ID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
LONG_PREFIX = "Plain prose, nothing to see. " * 12
"""Makes a value long enough (over 256 characters) for the hyperscan path."""


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    reset_warnings()
    yield
    reset_warnings()


def export(
    attributes: dict[str, Any], redactor: Redactor | None = None, limits: SpanLimits | None = None
) -> dict[str, Any]:
    """The attributes of one span as the application's exporter receives them."""
    provider = TracerProvider(span_limits=limits) if limits is not None else TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # the application's, added first
    install_redaction(provider, redactor or Redactor())
    with provider.get_tracer("tests.redaction.detectors").start_as_current_span("op") as span:
        span.set_attributes(attributes)
    provider.shutdown()
    (finished,) = exporter.get_finished_spans()
    return dict(finished.attributes or {})


def assert_exported(text: str, expected: str) -> None:
    """``text`` is exported as ``expected``, alone and at the end of a long value; ``session.id``
    next to it is never touched."""
    exported = export({"app.note": text, "app.long": LONG_PREFIX + text, semconv.SESSION_ID: SESSION_ID})
    assert exported == {
        "app.note": expected,
        "app.long": LONG_PREFIX + expected,
        semconv.SESSION_ID: SESSION_ID,
    }


def fullwidth(text: str) -> str:
    """``text`` with its ASCII characters but the space in their full-width forms (U+FF01-FF5E)."""
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


class TestCardSeparators:
    """Card digit groups separated by no-break spaces (as word processors and locales insert them)
    or by dots."""

    @pytest.mark.parametrize(
        "card",
        [
            "4111\u00a01111\u00a01111\u00a01111",  # NO-BREAK SPACE
            "4111\u202f1111\u202f1111\u202f1111",  # NARROW NO-BREAK SPACE (French locales)
            "4111\u20071111\u20071111\u20071111",  # FIGURE SPACE
            "4111.1111.1111.1111",
            "5500.0000.0000.0004",
            "3782.822463.10005",  # Amex grouping
        ],
    )
    def test_card_is_redacted(self, card: str) -> None:
        assert_exported(f"paid with {card}, thanks", "paid with [REDACTED:card], thanks")

    def test_dotted_card_next_to_an_expiry(self) -> None:
        assert_exported("card 4111.1111.1111.1111 12/27", "card [REDACTED:card] 12/27")

    @pytest.mark.parametrize(
        "text",
        [
            "card 4111.1111.1111.1112 fails Luhn",
            "pi is 3.141592653589793 roughly",  # a decimal, whatever its checksum
            "total 2.345.678.901.234.567 units",  # thousands separated by dots
            "build 4.1111.1111.1111 shipped",
            "card 4111\u00a01111\u00a01111\u00a01112 fails Luhn",
        ],
    )
    def test_dotted_numbers_that_are_no_card_are_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestFullWidthDigits:
    """Full-width digits (CJK input methods type them) are read as the digits they are: the same
    shapes and checks as ASCII digits, so no more false positives than there."""

    @pytest.mark.parametrize(
        ("value", "marker"),
        [
            ("4111 1111 1111 1111", "[REDACTED:card]"),
            ("4111111111111111", "[REDACTED:card]"),
            ("4111\u30001111\u30001111\u30001111", "[REDACTED:card]"),  # IDEOGRAPHIC SPACE
            ("123-45-6789", "[REDACTED:ssn]"),
            ("+49 30 12345678", "[REDACTED:phone]"),
            ("03-1234-5678", "[REDACTED:phone]"),
            ("+1 415-555-0132", "[REDACTED:phone]"),
        ],
    )
    def test_fullwidth_value_is_redacted(self, value: str, marker: str) -> None:
        assert_exported(f"番号 {fullwidth(value)} です", f"番号 {marker} です")

    def test_ascii_hyphens_between_fullwidth_digits(self) -> None:
        ssn = "-".join(map(fullwidth, ("123", "45", "6789")))
        assert_exported(f"ssn {ssn} x", "ssn [REDACTED:ssn] x")

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            (f"電話{fullwidth('03-1234-5678')}までお願いします", "電話[REDACTED:phone]までお願いします"),
            (f"カード{fullwidth('4111111111111111')}で支払い", "カード[REDACTED:card]で支払い"),
        ],
    )
    def test_next_to_cjk_text_without_spaces(self, text: str, expected: str) -> None:
        # CJK text has no spaces between words: a number directly after a kana or an ideograph
        # starts there, as it would after a space.
        assert_exported(text, expected)

    @pytest.mark.parametrize(
        "text",
        [
            f"{fullwidth('2024')}年{fullwidth('3')}月{fullwidth('12')}日に発送しました",
            f"注文番号{fullwidth('1234567890')}をご確認ください",
            f"価格は{fullwidth('1,250')}円です",
            f"バージョン{fullwidth('3.2.1')}",
            f"URL {fullwidth('https://example.com/claims/118')}",
            f"カード {fullwidth('4111 1111 1111 1112')} はLuhnで失敗",
            f"日付 {fullwidth('2024-03-12 10:30')}",
        ],
    )
    def test_fullwidth_numbers_that_are_nothing_are_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestSpacedSsn:
    def test_ssn_with_spaces_is_redacted(self) -> None:
        assert_exported("ssn 123 45 6789 on file", "ssn [REDACTED:ssn] on file")

    @pytest.mark.parametrize(
        "text",
        [
            "ssn 666 45 6789 is never issued",
            "ssn 123 00 6789 is never issued",
            "ssn 923 45 6789 is never issued",
            "scores 100 20 3000 40 50",  # a row of numbers, not one value
            "scores 123 45 6789 10",
        ],
    )
    def test_spaced_numbers_that_are_no_ssn_are_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestInternationalEmails:
    @pytest.mark.parametrize(
        "address",
        ["josé@exämple.com", "用户@例子.中国", "иван@пример.рф", "jörg@müller.de", "bob@例子.com", "अजय@डाटा.भारत"],
    )
    def test_address_is_redacted(self, address: str) -> None:
        assert_exported(f"write to {address} today", "write to [REDACTED:email] today")

    @pytest.mark.parametrize(
        "text",
        [
            "@用户 你好",
            "meet me @ 5pm",
            "pip install pkg@1.2.3",
            "decorated with @dataclass.field",
            "a@b",
            "pkg@1.0.rc1, lib@2.1.beta2, foo@3.0.dev1",  # a version's pre-release tag is no TLD
            "see foo_bar@my_module.py:12",  # no underscore in a host name
        ],
    )
    def test_not_addresses_are_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestSlashPhones:
    @pytest.mark.parametrize(
        "phone",
        ["0171/1234567", "+49 30/1234567", "089/123 456 78", "044/123 45 67", "+49 (0)30/1234567"],
    )
    def test_phone_is_redacted(self, phone: str) -> None:
        assert_exported(f"Tel. {phone} bitte", "Tel. [REDACTED:phone] bitte")

    @pytest.mark.parametrize(
        "text",
        [
            "due 12/03/2024 and 2024/03/12 10:30",
            "half 1/2, page 10/250, score 05/10",
            "https://shop.example.com/orders/0171/1234567/items",
            "ratio 0171/12 today",
            "Report 06/2024 2500 rows, period 07/2024 12345 units, Umsatz 04/2024 12 500 EUR",  # month/year
        ],
    )
    def test_slashed_numbers_that_are_no_phone_are_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestEverydayTextIsKept:
    @pytest.mark.parametrize(
        "text",
        [
            "Thanks for your patience, we will get back to you within two business days.",
            "Meeting on 2024-03-12 at 10:30; the report is due 2024-04-01.",
            "Upgraded from 3.2.1 to 3.10.0 (build 3.10.0.4501).",
            "Total due: $1,250.00, previously $12,345,678.90 and €1.250,00.",
            "Order 1000234567 and order #A-10023-77 and PO 20240312-0042 shipped.",
            "See https://portal.example.com/claims/118?from=2024-03-12&v=3.2.1#top for details.",
            "Amounts with no-break spaces: 1\u00a0250\u00a0000 € and 12\u202f345,67 €.",
            "ip 192.168.100.200, port 8080, pid 41234, epoch 1718035200.123",
        ],
    )
    def test_kept(self, text: str) -> None:
        assert_exported(text, text)


def _jwt(payload_chars: int, header_chars: int = 20) -> str:
    header = "eyJ" + "h" * (header_chars - 3)
    return f"{header}.eyJ{'p' * payload_chars}.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


class TestJwtAcrossTheCap:
    """Nothing of a JWT is exported when a size cap cuts it: the value would have been redacted whole."""

    @pytest.mark.parametrize(
        "jwt",
        [
            _jwt(payload_chars=3000),  # the scan window ends inside the payload
            _jwt(payload_chars=40, header_chars=3000),  # ... inside the header
        ],
    )
    def test_redactor_cap(self, jwt: str) -> None:
        limit = 1000
        value = "x" * (limit - 100) + " " + jwt + " tail"
        exported = export({"app.text": value}, redactor=Redactor(max_value_chars=limit))["app.text"]
        assert isinstance(exported, str)
        assert exported.startswith("x" * 100)
        assert "…[truncated " in exported
        assert "eyJ" not in exported
        assert "hhh" not in exported
        assert "ppp" not in exported

    def test_a_token_the_window_saw_whole_is_cut_as_before(self) -> None:
        limit = 1000
        value = "x" * 900 + " " + "A" * 580 + " " + "y" * 2000  # the token ends inside the scanned window
        exported = export({"app.text": value}, redactor=Redactor(max_value_chars=limit))["app.text"]
        assert exported == "x" * 900 + " " + "A" * 99 + "…[truncated 2482 chars]"

    def test_sdk_attribute_length_limit(self) -> None:
        # The SDK cuts the value when it is set, before any span processor sees it.
        jwt = _jwt(payload_chars=400)
        exported = export({"app.text": "bearer " + jwt}, limits=SpanLimits(max_span_attribute_length=200))
        assert exported == {"app.text": "bearer [REDACTED:jwt]"}

    def test_jwt_cut_by_a_truncation_marker(self) -> None:
        # Captured content is cut by its own cap, with a marker in place of the rest.
        text = "my token " + _jwt(payload_chars=40)[:40] + "…[truncated 3000 chars]"
        assert_exported(text, "my token [REDACTED:jwt]…[truncated 3000 chars]")


class TestEscapedAndFullWidthEmails:
    """An address written with JSON ``\\u`` escapes for its ``@`` or dots (some encoders escape them),
    or with the full-width commercial at (CJK input methods type it), is an address all the same."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ('{"to": "alice\\u0040example.com"}', '{"to": "[REDACTED:email]"}'),
            ('{"to": "alice\\u0040example\\u002ecom"}', '{"to": "[REDACTED:email]"}'),
            ('{"to": "alice@mail\\u002Eexample\\u002Ecom"}', '{"to": "[REDACTED:email]"}'),
            ('{"to": "alice\\u002esmith\\u0040example.com"}', '{"to": "[REDACTED:email]"}'),
            ('{"to": "\\nalice\\u0040example.com"}', '{"to": "\\n[REDACTED:email]"}'),
            ("write to alice\uff20example.com today", "write to [REDACTED:email] today"),
            (f"write to {fullwidth('alice@example.com')} today", "write to [REDACTED:email] today"),
        ],
    )
    def test_address_is_redacted(self, text: str, expected: str) -> None:
        assert_exported(text, expected)

    @pytest.mark.parametrize(
        "text",
        [
            '{"pkg": "pkg\\u00401.2.3"}',
            '{"note": "meet me \\u0040 5pm"}',
            '{"handle": "\\u0040alice"}',
            '{"pair": "a\\u0040b"}',
            "path C:\\users\\u0040x",
        ],
    )
    def test_escaped_at_that_is_no_address_is_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestPunycodeTopLevelDomains:
    @pytest.mark.parametrize("address", ["bob@example.xn--p1ai", "bob@xn--e1afmkfd.xn--p1ai", "bob@EXAMPLE.XN--P1AI"])
    def test_address_is_redacted(self, address: str) -> None:
        assert_exported(f"write to {address} today", "write to [REDACTED:email] today")

    def test_an_unfinished_punycode_label_is_no_domain(self) -> None:
        assert_exported("see bob@example.xn-- now", "see bob@example.xn-- now")


class TestJwtCutInItsHeader:
    """A cap may cut a JWT before its payload: the header alone, or its first part, at the end of the
    value or before a truncation marker, is the rest of a token."""

    HEADER = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"

    @pytest.mark.parametrize(
        "cut",
        [
            HEADER,
            HEADER[:19],  # 16 characters after "eyJ"
            HEADER + ".",
            HEADER + ".ey",
        ],
    )
    def test_at_the_end_of_the_value(self, cut: str) -> None:
        assert_exported(f"bearer {cut}", "bearer [REDACTED:jwt]")

    @pytest.mark.parametrize("marker", ["…[truncated 3000 chars]", "\\u2026[truncated 12 chars]"])
    def test_before_a_truncation_marker(self, marker: str) -> None:
        assert_exported(f'"my token {self.HEADER[:24]}{marker}"', f'"my token [REDACTED:jwt]{marker}"')

    def test_sdk_attribute_length_limit(self) -> None:
        jwt = _jwt(payload_chars=400, header_chars=36)
        exported = export({"app.text": "bearer " + jwt}, limits=SpanLimits(max_span_attribute_length=30))
        assert exported == {"app.text": "bearer [REDACTED:jwt]"}

    @pytest.mark.parametrize(
        "text",
        [
            "thanks eyJohnny",
            "short eyJhbGciOiJIUzI1",  # 13 characters after "eyJ"
            "cut eyJhbGciOiJIUzI…[truncated 3000 chars]",
            "mid eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9 goes on",  # neither at the end nor before a marker
        ],
    )
    def test_kept(self, text: str) -> None:
        assert_exported(text, text)


class TestSlashReferenceNumbers:
    """A number after a word that names a reference (an invoice, an order) is that reference, though
    it has the shape of a slash phone number."""

    @pytest.mark.parametrize(
        "text",
        [
            "Rechnung 0815/123456 vom 12.03.",
            "Rechnungs-Nr. 0815/123456",
            "Rechnungsnummer: 0821/1234567",
            "Invoice No. 0815/123456",
            "Bestellnummer 0815/123456",
            "Order #0815/123456 shipped",
            "Ref. 0815/123456",
            "Aktenzeichen 0815/123456",
            "Auftragsnummer 0815/123456",
        ],
    )
    def test_reference_is_kept(self, text: str) -> None:
        assert_exported(text, text)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Tel.-Nr. 0171/1234567", "Tel.-Nr. [REDACTED:phone]"),
            ("Telefon Nr. 089/123 456 78", "Telefon Nr. [REDACTED:phone]"),
            ("Telefonnummer 0821/123456", "Telefonnummer [REDACTED:phone]"),
            ("Rechnung 0815/123456, Fax 0821/123456", "Rechnung 0815/123456, Fax [REDACTED:phone]"),
            ("ruf mich an: 0815/123456", "ruf mich an: [REDACTED:phone]"),
            # a reference word inside a phone's name, or a number no reference word names: a phone
            ("Bestelltelefon: 0800/1234567", "Bestelltelefon: [REDACTED:phone]"),
            ("Bestellhotline 089/1234567", "Bestellhotline [REDACTED:phone]"),
            ("Ticketservice 01806/570070", "Ticketservice [REDACTED:phone]"),
            ("Auftragsannahme 089/1234567", "Auftragsannahme [REDACTED:phone]"),
            ("Orderline: 089/1234567", "Orderline: [REDACTED:phone]"),
            ("Rückruf unter Nr. 0171/1234567", "Rückruf unter Nr. [REDACTED:phone]"),
            ("Nr. 0815/123456", "Nr. [REDACTED:phone]"),
        ],
    )
    def test_phone_is_redacted(self, text: str, expected: str) -> None:
        assert_exported(text, expected)


class TestSpacedSsnNeedsACue:
    """Three numbers 3-2-4 apart are an SSN only after a word that says so; dashed, they always are."""

    @pytest.mark.parametrize(
        "text",
        [
            "123 45 6789",
            "id 123 45 6789 x",
            "scores: 123 45 6789",
            "classnote 123 45 6789",  # "ssn" inside a word is no cue
        ],
    )
    def test_lone_spaced_numbers_are_kept(self, text: str) -> None:
        assert_exported(text, text)

    @pytest.mark.parametrize(
        "cue",
        ["SSN: ", "ssn ", "my SSN is ", "Social Security Number ", "social security no. ", "SS# ", "SSN#"],
    )
    def test_spaced_ssn_after_a_cue_is_redacted(self, cue: str) -> None:
        assert_exported(f"{cue}123 45 6789 on file", f"{cue}[REDACTED:ssn] on file")

    def test_dashed_ssn_needs_no_cue(self) -> None:
        assert_exported("id 123-45-6789 x", "id [REDACTED:ssn] x")


class TestCjkNextToAnAddress:
    """CJK text has no spaces: prose glued to an ASCII address is not part of it."""

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("请联系alice@example.com", "请联系[REDACTED:email]"),
            ("请联系alice.smith@example.com谢谢", "请联系[REDACTED:email]谢谢"),
            ("メールはbob@example.jpまで", "メールは[REDACTED:email]まで"),
            ("연락처bob@example.com", "연락처[REDACTED:email]"),
            ("请联系用户@例子.中国", "[REDACTED:email]"),  # one script throughout: the whole run
            ("联系bob@例子.com吧", "联系[REDACTED:email]吧"),
        ],
    )
    def test_only_the_address_is_redacted(self, text: str, expected: str) -> None:
        assert_exported(text, expected)
