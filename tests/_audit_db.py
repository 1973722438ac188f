"""Scratch databases for audit tests: a SQLite file per test, a PostgreSQL database per module run
(``st_<name>_<random>``, dropped afterwards), so concurrent runs never share tables."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, Table, create_engine, text

POSTGRES_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[str]:
    """Create a fresh database and yield its URL; drop it (closing stray connections) after."""
    name = f"st_{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(f"{POSTGRES_SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{POSTGRES_SERVER}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def reset_public_schema(url: str) -> None:
    """Empty a scratch database: the audit log refuses TRUNCATE and DELETE, but not DROP SCHEMA."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


def empty_audit_log(engine: Engine, audit: Table, key: bytes) -> None:
    """Give ``engine``'s database an empty audit log: on PostgreSQL a reset public schema and
    ``install()`` (the chain trigger keyed with ``key``), elsewhere the ``audit`` table."""
    if engine.dialect.name == "postgresql":
        from sessiontrace.audit import postgres as audit_postgres

        reset_public_schema(engine.url.render_as_string(hide_password=False))
        audit_postgres.install(engine, key=key)
    else:
        audit.create(engine)
