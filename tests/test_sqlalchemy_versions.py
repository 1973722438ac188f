"""The audit layer on SQLAlchemy 2.0 as well as 2.1.

The development install resolves to SQLAlchemy 2.1, and the audit layer promises both. Here the
audit test modules run again, in a child pytest, with SQLAlchemy 2.0 installed in a directory put
in front of the environment's (``PYTHONPATH``): the same tests, the same real PostgreSQL and
SQLite, the older SQLAlchemy. It found that SQLAlchemy 2.0's async adapter passes psycopg's async
``copy`` through to the synchronous writer.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
AUDIT_MODULES = sorted(str(path) for path in TESTS.glob("test_audit_*.py"))


@pytest.fixture(scope="module")
def sqlalchemy_2_0(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose ``import sqlalchemy`` is the newest 2.0 release."""
    target = tmp_path_factory.mktemp("sqlalchemy-2.0")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), "sqlalchemy>=2.0,<2.1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, f"could not install SQLAlchemy 2.0 from the package index:\n{install.stderr}"
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))}


def test_the_child_imports_sqlalchemy_2_0(sqlalchemy_2_0: dict[str, str]) -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sqlalchemy; print(sqlalchemy.__version__)"],
        env=sqlalchemy_2_0,
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.startswith("2.0."), probe.stdout


def test_audit_tests_pass_on_sqlalchemy_2_0(sqlalchemy_2_0: dict[str, str]) -> None:
    assert len(AUDIT_MODULES) >= 5, AUDIT_MODULES
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *AUDIT_MODULES],
        cwd=TESTS.parent,
        env=sqlalchemy_2_0,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    assert " passed" in run.stdout.splitlines()[-1]
