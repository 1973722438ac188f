"""The public API is exactly what ``sessiontrace.__all__`` names, and every wire name is in semconv."""

from __future__ import annotations

import sessiontrace
from sessiontrace import semconv


class TestPublicApi:
    """Adding or removing a public name is a deliberate act: this list changes with it."""

    def test_exported_names_are_pinned(self) -> None:
        assert sorted(sessiontrace.__all__) == [
            "ConfigError",
            "Configuration",
            "InboundPolicy",
            "OutboundPolicy",
            "RedactingLogRecordProcessor",
            "RedactingSpanProcessor",
            "Redactor",
            "Session",
            "SessionLogRecordProcessor",
            "SessionPropagator",
            "SessionScope",
            "SessionSpanProcessor",
            "__version__",
            "configure",
            "current_session",
            "extract",
            "inject",
            "new_session_id",
            "session",
        ]

    def test_every_exported_name_exists(self) -> None:
        for name in sessiontrace.__all__:
            assert hasattr(sessiontrace, name), name


class TestSemconvTable:
    """The NAMES table documents every constant we put on the wire."""

    def test_every_wire_constant_is_documented(self) -> None:
        documented = {entry.name for entry in semconv.NAMES}
        constants = {
            value
            for name, value in vars(semconv).items()
            if name.isupper() and isinstance(value, str) and not name.startswith("BAGGAGE_")
        }
        assert constants <= documented, sorted(constants - documented)

    def test_baggage_keys_match_attribute_names(self) -> None:
        assert semconv.BAGGAGE_SESSION_ID == semconv.SESSION_ID
        assert semconv.BAGGAGE_USER_ID == semconv.USER_ID


class TestLazyImports:
    """``import sessiontrace`` is cheap; the names load on first use."""

    def test_lazy_names_match_all(self) -> None:
        assert set(sessiontrace._LAZY) | {"__version__"} == set(sessiontrace.__all__)

    def test_unknown_name_is_an_attribute_error(self) -> None:
        import pytest

        with pytest.raises(AttributeError, match="no_such_name"):
            _ = sessiontrace.no_such_name  # type: ignore[attr-defined]
