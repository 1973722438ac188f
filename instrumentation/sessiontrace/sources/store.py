"""Read a session's path from the embedded span store."""

from __future__ import annotations

from sessiontrace.path import SessionPath, build_path
from sessiontrace.sources import SessionNotFound
from sessiontrace.store import SpanStore


def load_session_path(store: SpanStore, session_id: str) -> SessionPath:
    """The path of ``session_id``: its spans and every other span of the traces they are in.

    Raises ``SessionNotFound`` when the store has no span of that session.
    """
    session_id = session_id.lower()
    spans = store.session_spans(session_id)
    if not spans:
        raise SessionNotFound(session_id, str(store.path))
    return build_path(session_id, spans)
