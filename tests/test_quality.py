"""Lint, format and strict typing are part of the test suite, so the README's one test command
checks them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed next to {sys.executable}: pip install -e '.[dev]'"
    return found


def _run(*command: str) -> None:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"


class TestQuality:
    def test_ruff_lint(self) -> None:
        _run(_tool("ruff"), "check", ".")

    def test_ruff_format(self) -> None:
        _run(_tool("ruff"), "format", "--check", ".")

    def test_mypy_strict(self) -> None:
        _run(_tool("mypy"))
