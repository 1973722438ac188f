"""The README says what the code does: its commands, variables and wire names stay in step."""

from __future__ import annotations

import re
from pathlib import Path

from sessiontrace import semconv
from sessiontrace.config import ENV_VARS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    return re.findall(r"```sh\n(python3 -m venv[^\n]*)\n```", README)


class TestReadme:
    def test_two_commands_demo_then_tests(self) -> None:
        commands = _commands()
        assert len(commands) == 2, commands
        assert commands[0].endswith("sessiontrace demo")
        assert "pytest" in commands[1]

    def test_ci_runs_the_readme_test_command(self) -> None:
        ci = (ROOT / ".ci" / "run").read_text()
        assert _commands()[1] in ci.splitlines()

    def test_every_environment_variable_is_documented(self) -> None:
        for var in ENV_VARS:
            assert f"`{var.name}`" in README, var.name

    def test_session_wire_names_are_in_the_readme(self) -> None:
        for entry in semconv.NAMES[:11]:  # the session names; the rest are in docs/names.md
            assert f"`{entry.name}`" in README, entry.name

    def test_names_document_is_generated_from_semconv(self) -> None:
        document = (ROOT / "docs" / "names.md").read_text()
        assert document == semconv.names_markdown(), "run: python -m sessiontrace.semconv > docs/names.md"
