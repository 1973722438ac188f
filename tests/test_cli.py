"""The `sessiontrace` command: sessions, path, exit codes, and a fast --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from _pathdata import Scenario, write_scenario
from sessiontrace.cli import main

UNKNOWN = "0190b0a6-1f3c-7d2e-9a4b-5c6d7e8f9a0b"


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Scenario]:
    path = tmp_path_factory.mktemp("cli") / "spans.sqlite3"
    return path, write_scenario(path)


def run(store: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--store", str(store), *args], env={"COLUMNS": "160"})
    return result.exit_code, result.stdout, result.stderr


class TestPath:
    """`path SESSION_ID` prints the whole session, as a tree or as JSON."""

    def test_tree(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, out, _ = run(store, "path", scenario.session_id)
        assert code == 0
        assert f"session {scenario.session_id}" in out
        assert "user alice  trigger api  services web, worker" in out
        assert "spans 7  traces 2" in out
        for name in ("POST /claims", "validate claim", "vendor lookup", "process claim",
                     "save claim", "late callback"):  # fmt: skip
            assert name in out
        ai_line = next(line for line in out.splitlines() if "chat gpt-4o" in line)
        assert "[worker]" in ai_line
        assert "✗ model timeout" in ai_line
        assert "⚠ first failure" in ai_line
        assert out.count("⚠ first failure") == 1
        assert "• cache miss" in out
        assert "cache.key=vendor:42" in out
        assert "(parent not stored)" in out
        # Time order: the web trace comes before the worker trace.
        assert out.index("POST /claims") < out.index("process claim") < out.index("late callback")

    def test_json(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, out, _ = run(store, "path", scenario.session_id, "--format", "json")
        assert code == 0
        doc = json.loads(out)
        assert doc["schema"] == "sessiontrace.path/1"
        session = doc["session"]
        assert session["id"] == scenario.session_id
        assert session["span_count"] == 7
        assert session["error_count"] == 2
        assert session["services"] == ["web", "worker"]
        assert session["first_failure"]["name"] == "chat gpt-4o"
        assert [t["trace_id"] for t in doc["traces"]] == [
            scenario.web_trace_id,
            scenario.worker_trace_id,
        ]
        (request,) = doc["traces"][0]["spans"]
        vendor = request["children"][0]["children"][0]
        assert vendor["name"] == "vendor lookup"
        assert vendor["session_id"] is None
        assert vendor["events"][0]["attributes"] == {"cache.key": "vendor:42", "ttl": 30}
        assert request["kind"] == "SERVER"
        assert request["attributes"]["claim.ids"] == [1, 2, 3]
        orphan = doc["traces"][1]["spans"][1]
        assert (orphan["name"], orphan["orphan"]) == ("late callback", True)
        assert doc["traces"][1]["spans"][0]["children"][0]["status"] == {
            "code": "ERROR",
            "message": "model timeout",
        }

    def test_uppercase_id_is_accepted(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, out, _ = run(store, "path", scenario.session_id.upper())
        assert code == 0
        assert scenario.session_id in out

    def test_an_unprintable_or_overlong_id_is_a_usage_error(self, stored: tuple[Path, Scenario]) -> None:
        # Any id `sessions` can list opens (other instrumentation sets ids that are not UUIDs).
        for bad in ("x" * 257, "a\x1bb"):
            code, _, err = run(stored[0], "path", bad)
            assert code == 2
            assert "1 to 256 printable characters" in err

    def test_unknown_session(self, stored: tuple[Path, Scenario]) -> None:
        code, out, err = run(stored[0], "path", UNKNOWN)
        assert code == 1
        assert f"no spans of session {UNKNOWN}" in err
        assert out == ""


class TestSessions:
    """`sessions` lists recent sessions newest first."""

    def test_table(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, out, _ = run(store, "sessions")
        assert code == 0
        assert out.index(scenario.other_session_id) < out.index(scenario.session_id)
        line = next(line for line in out.splitlines() if scenario.session_id in line)
        assert "alice" in line
        assert "api" in line
        assert "POST /claims" in line
        assert "web, worker" in line

    def test_json_and_limit(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        code, out, _ = run(store, "sessions", "--format", "json", "--limit", "1")
        assert code == 0
        doc = json.loads(out)
        assert [s["id"] for s in doc["sessions"]] == [scenario.other_session_id]
        code, out, _ = run(store, "sessions", "--format", "json")
        main_session = json.loads(out)["sessions"][1]
        assert main_session["span_count"] == 6
        assert main_session["error_count"] == 2


class TestStoreProblems:
    """A missing or broken store is a clear message and exit code 2, never a traceback."""

    def test_missing_store(self, tmp_path: Path) -> None:
        missing = tmp_path / "nothing.sqlite3"
        for args in (("sessions",), ("path", UNKNOWN)):
            code, _, err = run(missing, *args)
            assert code == 2
            assert f"no store at {missing}: run `sessiontrace demo`" in err
        assert not missing.exists()

    def test_corrupt_store(self, tmp_path: Path) -> None:
        corrupt = tmp_path / "spans.sqlite3"
        corrupt.write_bytes(b"definitely not sqlite" * 200)
        for args in (("sessions",), ("path", UNKNOWN)):
            code, _, err = run(corrupt, *args)
            assert code == 2
            assert "is not a sessiontrace store (file is corrupt or another format)" in err
            assert "Traceback" not in err

    def test_store_from_env(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        result = CliRunner().invoke(main, ["sessions"], env={"SESSIONTRACE_STORE": str(store)})
        assert result.exit_code == 0
        assert scenario.session_id in result.stdout


def _command() -> list[str]:
    script = Path(sys.executable).with_name("sessiontrace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sessiontrace.cli"]


class TestRealProcess:
    """The installed command, run as a user would."""

    def test_path_in_a_subprocess(self, stored: tuple[Path, Scenario]) -> None:
        store, scenario = stored
        env = {**os.environ, "NO_COLOR": "1", "SESSIONTRACE_STORE": str(store)}
        done = subprocess.run(
            [*_command(), "path", scenario.session_id],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "⚠ first failure" in done.stdout
        assert "\x1b[" not in done.stdout  # no colour codes in a pipe
        bad = subprocess.run([*_command(), "path", UNKNOWN], capture_output=True, text=True, env=env, timeout=60)
        assert bad.returncode == 1
        assert "Traceback" not in bad.stderr

    def test_import_is_light(self) -> None:
        code = (
            "import sys, sessiontrace.cli\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('rich', 'sqlite3', '_sqlite3') or m.startswith('opentelemetry.sdk'))\n"
            "print(','.join(heavy))\n"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == ""

    def test_help(self) -> None:
        done = subprocess.run([*_command(), "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0
        assert "sessions" in done.stdout
        assert "path" in done.stdout
