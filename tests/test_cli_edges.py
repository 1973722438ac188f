"""The CLI on hostile input: it answers with one clear line and an exit code, never a traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import Status, StatusCode

from _pathdata import Scenario, write_scenario
from sessiontrace.cli import main
from sessiontrace.render.json import dumps
from sessiontrace.store import StoreSpanExporter

BAD_PORT = "postgresql://u@h:abc/db"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scenario]:
    path = tmp_path_factory.mktemp("cli-edges") / "spans.sqlite3"
    return path, write_scenario(path)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env={"COLUMNS": "160"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


class TestBadPortInUrl:
    """``int("abc")`` inside SQLAlchemy's URL parser is a ValueError, not an ArgumentError."""

    def test_path_audit_db(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, _, err = run("--store", str(store), "path", scenario.session_id, "--audit-db", BAD_PORT)
        assert code == 2
        assert f"not a database URL or file: {BAD_PORT}" in err

    @pytest.mark.parametrize("command", [["audit", "verify"], ["audit", "setup"]])
    def test_audit_db(self, command: list[str]) -> None:
        code, _, err = run(*command, "--db", BAD_PORT)
        assert code == 2
        assert "--db is not a database URL" in err


def write_spans(store: Path, *spans: tuple[str, dict[str, Any]], error: str | None = None) -> None:
    """One span per (name, attributes), ended at once; the first one ERROR with ``error``."""
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(StoreSpanExporter(store)))
    for index, (name, attributes) in enumerate(spans):
        span = tp.get_tracer("tests.edges").start_span(name, attributes=attributes)
        if index == 0 and error is not None:
            span.add_event("request", {"http.user_agent": error})
            span.set_status(Status(StatusCode.ERROR, "no route for " + error))
        span.end()
    tp.shutdown()


def sessiontrace(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sessiontrace.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)


SID = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"
EVIL = "\x1b[2J\x1b[H\x1b]8;;https://evil.example/\x1b\\all good\x1b]8;;\x1b\\\x9b31m"


class TestControlCharacters:
    """Span data is untrusted: its escape sequences must not reach the operator's terminal."""

    @pytest.fixture(scope="class")
    @classmethod
    def evil_store(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        store = tmp_path_factory.mktemp("evil") / "spans.sqlite3"
        write_spans(store, ("GET /claims\x1b[8m", {"session.id": SID, "user.id": "u1\x1b[31m"}), error=EVIL)
        return store

    def test_path_escapes_them(self, evil_store: Path) -> None:
        code, out, _ = run("--store", str(evil_store), "path", SID)
        assert code == 0
        assert "\x1b" not in out
        assert "\x9b" not in out
        assert "GET /claims\\x1b[8m" in out
        assert "user u1\\x1b[31m" in out
        assert "no route for \\x1b[2J\\x1b[H\\x1b]8;;https://evil.example/" in out

    def test_sessions_escapes_them(self, evil_store: Path) -> None:
        code, out, _ = run("--store", str(evil_store), "sessions")
        assert code == 0
        assert "\x1b" not in out
        assert "u1\\x1b[31m" in out
        assert "GET /claims\\x1b[8m" in out

    def test_json_keeps_them_exact(self, evil_store: Path) -> None:
        code, out, _ = run("--store", str(evil_store), "path", SID, "--format", "json")
        assert code == 0
        assert "\x1b" not in out  # JSON escapes them itself
        assert json.loads(out)["session"]["user_id"] == "u1\x1b[31m"


def test_non_finite_floats_are_strict_json(tmp_path: Path) -> None:
    store = tmp_path / "spans.sqlite3"
    write_spans(store, ("score", {"session.id": SID, "model.score": float("nan"), "ratio": float("-inf")}))
    code, out, _ = run("--store", str(store), "path", SID, "--format", "json")
    assert code == 0

    def strict(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    (span,) = json.loads(out, parse_constant=strict)["traces"][0]["spans"]
    assert span["attributes"]["model.score"] == "nan"
    assert span["attributes"]["ratio"] == "-inf"


def test_json_writer_is_json_dumps() -> None:
    """The iterative writer writes exactly what ``json.dumps(indent=2)`` would."""
    document = {"a": [1, 2.5, {"b": {}, "c": []}], "z": None, "é": "ü\x1b", "t": True, "n": {"x": [[]]}}
    assert dumps(document) == json.dumps(document, indent=2, ensure_ascii=False)


def test_limit_out_of_range_is_a_usage_error(stored: tuple[Path, Scenario]) -> None:
    store, _ = stored
    code, _, err = run("--store", str(store), "sessions", "--limit", "99999999999999999999")
    assert code == 2
    assert "is not in the range 1<=x<=1000000" in err


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_output_on_a_non_utf8_stream(stored: tuple[Path, Scenario], encoding: str) -> None:
    store, scenario = stored
    for args in (["path", scenario.session_id], ["sessions"]):
        done = sessiontrace("--store", str(store), *args, env={"PYTHONIOENCODING": encoding, "COLUMNS": "160"})
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
        if args[0] == "path":
            assert "? model timeout" in done.stdout  # ✗ cannot be encoded
            assert "first failure" in done.stdout


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_store_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    store = tmp_path / "spans.sqlite3"
    if kind == "fifo":
        os.mkfifo(store)
    else:
        store.mkdir()
    for args in (["sessions"], ["path", SID]):
        done = sessiontrace("--store", str(store), *args, timeout=20)  # a FIFO used to block forever
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert str(store) in done.stderr


class TestDeepTrace:
    """A trace nested deeper than Python's recursion limit is shown whole, in both formats."""

    DEPTH = 1100

    @pytest.fixture(scope="class")
    @classmethod
    def deep_store(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        store = tmp_path_factory.mktemp("deep") / "spans.sqlite3"
        tp = TracerProvider()
        tp.add_span_processor(BatchSpanProcessor(StoreSpanExporter(store), max_queue_size=10_000))
        tracer, context, spans = tp.get_tracer("tests.deep"), None, []
        for level in range(cls.DEPTH):
            span = tracer.start_span(f"level {level}", context=context, attributes={"session.id": SID})
            spans.append(span)
            context = trace.set_span_in_context(span)
        for span in reversed(spans):
            span.end()
        tp.shutdown()
        return store

    def test_tree(self, deep_store: Path) -> None:
        code, out, _ = run("--store", str(deep_store), "path", SID)
        assert code == 0
        for level in (0, 23, 24, 600, self.DEPTH - 1):  # every level shown, the deep ones flattened
            assert f"level {level}  [" in out
        assert f"↳ depth {self.DEPTH}  level {self.DEPTH - 1}" in out

    def test_json(self, deep_store: Path) -> None:
        code, out, _ = run("--store", str(deep_store), "path", SID, "--format", "json")
        assert code == 0
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10 * self.DEPTH)  # json.loads recurses too
        try:
            span = json.loads(out)["traces"][0]["spans"][0]
        finally:
            sys.setrecursionlimit(limit)
        for level in range(self.DEPTH):
            assert span["name"] == f"level {level}"
            span = span["children"][0] if level < self.DEPTH - 1 else span
        assert span["children"] == []


class TestSessionIdsOfOtherInstrumentation:
    """`sessions` lists any id the store holds; `path` opens each of them."""

    IDS = ("chat-2024-0001", "{0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b}")

    @pytest.fixture(scope="class")
    @classmethod
    def foreign_store(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        store = tmp_path_factory.mktemp("foreign") / "spans.sqlite3"
        write_spans(store, ("chat turn", {"session.id": cls.IDS[0]}), ("braced", {"session.id": cls.IDS[1]}))
        return store

    def test_listed_ids_open(self, foreign_store: Path) -> None:
        code, out, _ = run("--store", str(foreign_store), "sessions", "--format", "json")
        assert code == 0
        listed = [s["id"] for s in json.loads(out)["sessions"]]
        assert sorted(listed) == sorted(self.IDS)
        for session_id in listed:
            code, out, err = run("--store", str(foreign_store), "path", session_id)
            assert code == 0, err
            assert f"session {session_id}" in out

    def test_unknown_id_is_not_found(self, foreign_store: Path) -> None:
        code, _, err = run("--store", str(foreign_store), "path", "chat-2024-0002")
        assert code == 1
        assert "sessiontrace sessions" in err

    @pytest.mark.parametrize("bad", ["", "x" * 257, "chat\x1b[2J"])
    def test_unprintable_or_long_id_is_a_usage_error(self, foreign_store: Path, bad: str) -> None:
        code, _, err = run("--store", str(foreign_store), "path", bad)
        assert code == 2
        assert "1 to 256 printable characters" in err
        assert "\x1b" not in err


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("httpx", "uvicorn", "sklearn", "sqlalchemy", "psycopg")),
    reason="needs the demo and audit extras",
)
def test_demo_service_that_cannot_start(tmp_path: Path) -> None:
    """A database that is not there: one line saying why, not the services' tracebacks."""
    done = sessiontrace(
        "--store", str(tmp_path / "spans.sqlite3"), "demo", "--audit-db", "postgresql://postgres@127.0.0.1:1/nodb"
    )
    assert done.returncode == 3
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("demo service ledger exited with 1: ")
    assert "Connection refused" in line or "connection failed" in line


class TestWhereOptionsGo:
    """Options where a user writes them, and the same forms in every command."""

    def test_store_after_the_command_name(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, out, _ = run("sessions", "--store", str(store), "--format", "json")
        assert code == 0
        assert scenario.session_id in out
        code, out, _ = run("path", scenario.session_id, "--store", str(store))
        assert code == 0
        assert scenario.session_id in out

    def test_store_after_the_command_name_wins(self, stored: tuple[Path, Scenario], tmp_path: Path) -> None:
        store, scenario = stored
        code, out, _ = run("--store", str(tmp_path / "other.sqlite3"), "sessions", "--store", str(store))
        assert code == 0
        assert scenario.session_id in out

    def test_audit_db_takes_a_sqlite_file_as_path_audit_db_does(self, tmp_path: Path) -> None:
        from sqlalchemy import MetaData, create_engine

        from sessiontrace.audit import audit_log_table

        database = tmp_path / "audit.sqlite3"
        engine = create_engine(f"sqlite:///{database}")
        audit_log_table(MetaData()).metadata.create_all(engine)
        engine.dispose()
        code, out, err = run("audit", "verify", "--db", str(database))
        assert (code, err) == (0, "")
        assert out == "audit_log: empty, nothing to verify (0 rows/s)\n"
        code, _, err = run("audit", "verify", "--db", str(tmp_path / "missing.sqlite3"))
        assert code == 4  # the database cannot be read, as for sqlite:///missing.sqlite3
        assert f"no SQLite database at {tmp_path / 'missing.sqlite3'}" in err

    def test_demo_refuses_a_database_it_does_not_support(self, tmp_path: Path) -> None:
        code, _, err = run("--store", str(tmp_path / "spans.sqlite3"), "demo", "--audit-db", "mysql://u@h/db")
        assert code == 2
        assert "--audit-db must be a SQLite or PostgreSQL database, not mysql" in err
