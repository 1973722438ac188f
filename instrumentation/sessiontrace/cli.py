"""The ``sessiontrace`` command.

``sessiontrace --help`` must answer instantly, so this module imports only click: the store,
the SDK and rich are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from sessiontrace._version import __version__

if TYPE_CHECKING:
    from sessiontrace.store import SpanStore

EXIT_NOT_FOUND = 1
EXIT_STORE = 2
EXIT_USAGE = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="SESSIONTRACE_STORE",
    help="Span store file. [env: SESSIONTRACE_STORE; default: $XDG_DATA_HOME/sessiontrace/spans.sqlite3]",
)
@click.version_option(__version__, prog_name="sessiontrace")
@click.pass_context
def main(ctx: click.Context, store_path: Path | None) -> None:
    """Follow one session across all of its traces."""
    if store_path is None:
        from sessiontrace.store import default_store_path

        store_path = default_store_path()
    ctx.obj = store_path


@main.command()
@click.option("--limit", "-n", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.pass_obj
def sessions(store_path: Path, limit: int, fmt: str) -> None:
    """List recent sessions, newest first."""
    store = _open_store(store_path)
    try:
        found = store.sessions(limit=limit)
    except _store_error() as exc:
        _fail(str(exc), EXIT_STORE)
    finally:
        store.close()
    if fmt == "json":
        from sessiontrace.render.json import dumps, sessions_document

        click.echo(dumps(sessions_document(found)))
    else:
        from sessiontrace.render.table import print_sessions

        print_sessions(found)


@main.command()
@click.argument("session_id")
@click.option("--format", "fmt", type=click.Choice(["tree", "json"]), default="tree", show_default=True)
@click.pass_obj
def path(store_path: Path, session_id: str, fmt: str) -> None:
    """Show the full path of SESSION_ID: every span of every trace it touched."""
    from sessiontrace._values import InvalidValue
    from sessiontrace._values import session_id as valid_session_id

    try:
        session_id = valid_session_id(session_id)
    except InvalidValue as exc:
        raise click.BadParameter(str(exc), param_hint="SESSION_ID") from exc

    from sessiontrace.sources import SessionNotFound
    from sessiontrace.sources.store import load_session_path

    store = _open_store(store_path)
    try:
        session_path = load_session_path(store, session_id)
    except SessionNotFound as exc:
        _fail(f"{exc.args[0]}; `sessiontrace sessions` lists the stored ones", EXIT_NOT_FOUND)
    except _store_error() as exc:
        _fail(str(exc), EXIT_STORE)
    finally:
        store.close()
    if fmt == "json":
        from sessiontrace.render.json import dumps, path_document

        click.echo(dumps(path_document(session_path)))
    else:
        from sessiontrace.render.tree import print_path

        print_path(session_path)


@main.command()
@click.pass_obj
def demo(store_path: Path) -> None:
    """Run a small multi-service demo into the store and show its session path."""
    from sessiontrace.demo import run_demo

    sys.exit(run_demo(store_path))


@main.group()
def audit() -> None:
    """Set up and inspect the audit log of database changes."""


@audit.command()
@click.option(
    "--db", "url", required=True, envvar="SESSIONTRACE_AUDIT_DB", help="PostgreSQL URL. [env: SESSIONTRACE_AUDIT_DB]"
)
@click.option("--key-env", metavar="VAR", help="Environment variable holding the chain's HMAC key (never a flag).")
@click.option("--app-role", metavar="NAME", help="Role the application connects as: INSERT and SELECT only.")
@click.option("--owner-role", metavar="NAME", help="Role owning the log, its key and its trigger functions.")
@click.option("--tables", metavar="T1,T2", help="Tables to audit with triggers (name or schema.name).")
@click.option("--schema", metavar="NAME", help="Schema of the audit log. [default: the search_path's first]")
@click.option("--partition-by-month", is_flag=True, help="Create the log partitioned by month (new logs only).")
def setup(
    url: str,
    key_env: str | None,
    app_role: str | None,
    owner_role: str | None,
    tables: str | None,
    schema: str | None,
    partition_by_month: bool,
) -> None:
    """Create or update the audit log on PostgreSQL (safe to re-run), and audit --tables."""
    import os

    key: bytes | None = None
    if key_env is not None:
        value = os.environb.get(key_env.encode())
        if not value:
            _fail(f"--key-env {key_env}: the variable is not set or empty", EXIT_USAGE)
        key = value
    table_names = [t.strip() for t in tables.split(",") if t.strip()] if tables else []

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        _fail("--db is not a database URL (postgresql://user@host:5432/dbname)", EXIT_USAGE)
    if parsed.get_backend_name() != "postgresql":
        _fail(f"--db must be a PostgreSQL URL, not {parsed.get_backend_name()}", EXIT_USAGE)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # the audit extra installs psycopg 3
    shown = parsed.render_as_string(hide_password=True)

    from sessiontrace.audit.postgres import AuditSetupError, audit_tables, install

    engine = create_engine(parsed)
    try:
        with engine.begin() as conn:
            install(
                conn,
                key=key,
                owner_role=owner_role,
                app_role=app_role,
                schema=schema,
                partition_by_month=partition_by_month,
            )
            if table_names:
                audit_tables(conn, table_names, schema=schema)
    except AuditSetupError as exc:
        _fail(str(exc), EXIT_USAGE)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        _fail(f"{shown}: {reason}", EXIT_STORE)
    finally:
        engine.dispose()
    audited = f"; auditing {', '.join(table_names)}" if table_names else ""
    click.echo(f"audit log ready in {shown}{audited}")


def _open_store(store_path: Path) -> SpanStore:
    from sessiontrace.store import SpanStore, StoreError, StoreNotFound

    try:
        return SpanStore(store_path, readonly=True)
    except StoreNotFound:
        _fail(
            f"no store at {store_path}: run `sessiontrace demo` or configure() an app first",
            EXIT_STORE,
        )
    except StoreError as exc:
        _fail(str(exc), EXIT_STORE)


def _store_error() -> type[Exception]:
    from sessiontrace.store import StoreError

    return StoreError


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"sessiontrace: {message}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
