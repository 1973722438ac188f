"""``sessiontrace demo``: the claims-triage example (``examples/claims_triage``) on the embedded store.

Three processes: this one plays the claimants' browser; ``claims_triage.intake`` (ASGI, uvicorn)
receives each claim, starts its session and runs the ``claims-triage`` workflow, whose AI step is
a small local model; ``claims_triage.ledger`` (WSGI) is the second service it calls. Two claims
are filed: a clear-cut one, and an ambiguous one that the model is unsure of and that goes to
(a stand-in for) human review. Both services export to the same SQLite store, and keep their
claim and reserve records in one audited database (``audit_db``: a SQLite file next to the store
by default, or a PostgreSQL URL). When they have shut down (flushing their spans), each session's
path is read back, joined with the audit log, and printed, the clear-cut claim first: every change
shows under the step that made it, with its diff.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVICES = ("ledger", "intake")
EXIT_SERVICE = 3
"""A demo service could not start (the cause is printed, on one line)."""
_STARTUP_SECONDS = 30.0
# The demo runs on the embedded defaults: the local model, never a paid API.
_REMOTE_MODEL_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL")

CLAIMS: tuple[tuple[str, dict[str, Any]], ...] = (
    # The model is sure (about 0.85), so no one needs to look.
    (
        "clear-cut claim",
        {
            "policy": "P-1042",
            "line": "motor",
            "amount": 38500.00,
            "description": (
                "Head-on collision on the motorway, driver taken to hospital with fractures, car written off."
            ),
        },
    ),
    # A branch on a car roof could be a scratch or a write-off: the model is unsure (about 0.40),
    # so the workflow waits for a human.
    (
        "ambiguous claim",
        {
            "policy": "P-2087",
            "line": "motor",
            "amount": 2400.00,
            "description": "Tree branch fell on the car roof in the storm.",
        },
    ),
)


AUDIT_FILE = "claims-audit.sqlite3"
"""The default audit database: a SQLite file of this name next to the span store."""


def run_demo(store_path: Path, audit_db: str | None = None) -> int:
    """Run the demo against ``store_path``, keeping the records in ``audit_db`` (a SQLAlchemy URL or
    a SQLite file; default: ``AUDIT_FILE`` next to the store); print ``session.id: <id>`` per
    claim, then the paths joined with the audit log. Returns the exit code."""
    # The services import these; finding them here turns a crash in a child into one clear line.
    # (find_spec, not import: scikit-learn takes a second to import and only the intake needs it.)
    missing = [name for name in ("httpx", "uvicorn", "sklearn", "sqlalchemy") if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"the demo needs its extra ({', '.join(missing)} missing): pip install 'sessiontrace[demo]'",
            file=sys.stderr,
        )
        return 2
    if audit_db and audit_db.startswith("postgresql") and importlib.util.find_spec("psycopg") is None:
        print("--audit-db on PostgreSQL needs psycopg 3: pip install 'sessiontrace[audit]'", file=sys.stderr)
        return 2
    if importlib.util.find_spec("claims_triage") is None:
        print("the demo runs the claims_triage example, which ships with sessiontrace: reinstall it", file=sys.stderr)
        return 2
    import httpx

    from claims_triage import AUDIT_DB_ENV
    from sessiontrace.sources.audit import AuditLogError, database_url, shown

    store_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        audit_url = database_url(audit_db or str(store_path.parent / AUDIT_FILE))
    except AuditLogError as exc:
        print(f"--audit-db: {exc}", file=sys.stderr)
        return 2
    backend = audit_url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        print(f"--audit-db must be a SQLite or PostgreSQL database, not {backend}", file=sys.stderr)
        return 2
    ports = {name: _free_port() for name in SERVICES}
    env = {
        **os.environ,
        "SESSIONTRACE_STORE": str(store_path),
        "SESSIONTRACE_EXPORTER": "store",
        AUDIT_DB_ENV: audit_url.render_as_string(hide_password=False),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # the demo is about the embedded store
    for name in _REMOTE_MODEL_VARIABLES:
        env.pop(name, None)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    answers: list[dict[str, Any]] = []
    try:
        for name in SERVICES:
            command = [sys.executable, "-m", f"claims_triage.{name}", "--port", str(ports[name])]
            if name == "intake":
                command += ["--ledger", f"http://127.0.0.1:{ports['ledger']}"]
            processes[name] = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        try:
            for name in SERVICES:
                _wait_until_up(name, ports[name], processes[name])
            # The "browser": no session of its own, so the intake mints one per claim.
            for title, claim in CLAIMS:
                response = httpx.post(f"http://127.0.0.1:{ports['intake']}/claims", json=claim, timeout=30)
                response.raise_for_status()
                answers.append({**response.json(), "title": title, "session_id": response.headers["x-session-id"]})
        except ServiceFailed as exc:
            print(exc, file=sys.stderr)
            return EXIT_SERVICE
        except httpx.HTTPError as exc:
            print(f"demo service intake failed: {' '.join(str(exc).split())}", file=sys.stderr)
            return EXIT_SERVICE
    finally:
        _stop(processes)

    from sessiontrace.path import attach_changes
    from sessiontrace.render.tree import print_path
    from sessiontrace.sources.audit import load_changes
    from sessiontrace.sources.store import load_session_path
    from sessiontrace.store import SpanStore

    # The first line is the clear-cut claim's session id: scripts read it.
    for answer in answers:
        print(f"session.id: {answer['session_id']}", flush=True)
    store = SpanStore(store_path)
    try:
        paths = [load_session_path(store, answer["session_id"]) for answer in answers]
    finally:
        store.close()
    code = 0
    try:
        changes = load_changes(audit_url, [trace_id for path in paths for trace_id in path.trace_ids])
    except AuditLogError as exc:
        print(f"the audit log could not be read, so the changes are shown from the spans: {exc}", file=sys.stderr)
        code = 1
    else:
        for path in paths:
            attach_changes(path, changes)
    for answer, path in zip(answers, paths, strict=True):
        print(
            f"\n{answer['title']} {answer['claim_id']}: severity {answer['severity']},"
            f" confidence {answer['confidence']:.2f}, decided by {answer['decided_by']}",
            flush=True,
        )
        print_path(path)
    where = shown(audit_url)
    print(f"\nstore: {store_path}")
    print(f"audit log: {where}")
    from sessiontrace.store import default_store_path

    store_option = "" if store_path == default_store_path() else f"--store {shlex.quote(str(store_path))} "
    for answer in answers:
        print(f"again: sessiontrace {store_option}path {answer['session_id']} --audit-db {shlex.quote(where)}")
    return code


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceFailed(RuntimeError):
    """A demo service exited, or did not listen, at startup; the message is one line."""


def _wait_until_up(name: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise ServiceFailed(f"demo service {name} exited with {process.returncode}: {_cause(stderr)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceFailed(f"demo service {name} did not listen on port {port} within {_STARTUP_SECONDS:.0f} s")


_EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Failure)\b.*")


def _cause(stderr: str) -> str:
    """The one line of a service's dying words that says why: its traceback's last exception line
    (``sqlalchemy.exc.OperationalError: ... Connection refused``), else its last line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    exceptions = [line for line in lines if _EXCEPTION_LINE.fullmatch(line) and ":" in line]
    cause = exceptions[-1] if exceptions else lines[-1] if lines else "no error output"
    return " ".join(cause.split())[:500]


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM, so each service shuts down cleanly and flushes its spans to the store."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for name, process in processes.items():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            print(f"demo service {name} did not stop in time; its last spans may be missing", file=sys.stderr)
