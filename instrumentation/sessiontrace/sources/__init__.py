"""Where a session's spans are read back from: the embedded store today; Jaeger, Tempo and the
audit DB will sit beside it. Each source returns a ``SessionPath``; importing this package
imports no backend."""

from __future__ import annotations


class SessionNotFound(LookupError):
    """The source holds no span of this session."""

    def __init__(self, session_id: str, where: str) -> None:
        super().__init__(f"no spans of session {session_id} in {where}")
        self.session_id = session_id


__all__ = ["SessionNotFound"]
