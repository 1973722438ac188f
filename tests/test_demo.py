"""``sessiontrace demo`` runs two real services in their own processes and shows one session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from sessiontrace import semconv
from sessiontrace.store import SpanStore

UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


class TestDemo:
    """The demo prints the session id, then a path covering both services and the background task."""

    def test_demo_shows_one_session_across_processes(self, tmp_path: Path) -> None:
        store_path = tmp_path / "spans.sqlite3"
        script = Path(sys.executable).parent / "sessiontrace"
        result = subprocess.run(
            [str(script), "--store", str(store_path), "demo"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": str(Path(sys.executable).parent), "NO_COLOR": "1", "HOME": str(tmp_path)},
        )
        assert result.returncode == 0, result.stderr
        match = re.search(r"^session\.id: (\S+)$", result.stdout, re.MULTILINE)
        assert match, result.stdout
        session_id = match.group(1)
        assert UUID7.fullmatch(session_id), session_id

        for expected in ("POST /claims", "validate claim", "POST /entries", "post reserve", "notify adjuster"):
            assert expected in result.stdout, f"{expected!r} missing from the path:\n{result.stdout}"

        store = SpanStore(store_path)
        try:
            spans = store.session_spans(session_id)
        finally:
            store.close()
        services = {span.service_name for span in spans}
        assert services == {"frontdoor", "ledger"}
        assert len({span.trace_id for span in spans}) == 1, "the hop to the ledger continues the trace"
        stamped = [span for span in spans if span.attributes.get(semconv.SESSION_ID) == session_id]
        assert len(stamped) == len(spans), [span.name for span in spans if span not in stamped]
        trigger = {span.attributes.get(semconv.TRIGGER_SOURCE) for span in spans}
        assert trigger == {"api"}
