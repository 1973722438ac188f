"""The CLI on hostile input: it answers with one clear line and an exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from _pathdata import Scenario, write_scenario
from sessiontrace.cli import main

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
