"""The ``sessiontrace`` command.

``sessiontrace --help`` must answer instantly, so this module imports only click: the store,
the SDK and rich are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from sessiontrace._version import __version__
from sessiontrace.records import MAX_SESSION_ID, is_listed_session_id

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from sessiontrace.path import SessionPath
    from sessiontrace.store import SpanStore

EXIT_NOT_FOUND = 1
EXIT_STORE = 2
EXIT_USAGE = 2

MAX_LIMIT = 1_000_000


_STORE_TYPE = click.Path(path_type=Path, dir_okay=False)
_STORE_HELP = "Span store file. [env: SESSIONTRACE_STORE; default: $XDG_DATA_HOME/sessiontrace/spans.sqlite3]"


def _store_after_command(command: Callable[..., None]) -> Callable[..., None]:
    """``--store`` after the command name too (``sessiontrace sessions --store X``): it wins over
    one before it."""

    def override(ctx: click.Context, _: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.obj = value

    option = click.option("--store", type=_STORE_TYPE, expose_value=False, callback=override, help=_STORE_HELP)
    return option(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_path", type=_STORE_TYPE, envvar="SESSIONTRACE_STORE", help=_STORE_HELP)
@click.version_option(__version__, prog_name="sessiontrace")
@click.pass_context
def main(ctx: click.Context, store_path: Path | None) -> None:
    """Follow one session across all of its traces."""
    _tolerant_output()
    if store_path is None:
        from sessiontrace.store import default_store_path

        store_path = default_store_path()
    ctx.obj = store_path


@main.command()
@click.option("--limit", "-n", type=click.IntRange(min=1, max=MAX_LIMIT), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_store_after_command
@click.pass_obj
def sessions(store_path: Path, limit: int, fmt: str) -> None:
    """List recent sessions, newest first.

    \b
    Exit codes:
      0  listed (or the store has no session yet)
      2  usage error, or the store could not be read (no store, not a
         regular file, corrupt, unavailable)
    """
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
@click.option(
    "--audit-db",
    metavar="URL",
    help="Join the audit log in this database (SQLAlchemy URL or SQLite file): each change under its span, with"
    ' the diff (in JSON, a "changes" list on each span).',
)
@_store_after_command
@click.pass_obj
def path(store_path: Path, session_id: str, fmt: str, audit_db: str | None) -> None:
    """Show the full path of SESSION_ID: every span of every trace it touched.

    SESSION_ID is as `sessiontrace sessions` lists it: usually a UUID, but any id other
    instrumentation set (1 to 256 printable characters).

    \b
    Exit codes:
      0  shown
      1  the store has no span of SESSION_ID
      2  usage error, or the store or --audit-db could not be read
    """
    session_id = _valid_session_id(session_id)

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
    if audit_db is not None:
        _join_audit_log(session_path, audit_db)
    if fmt == "json":
        from sessiontrace.render.json import dumps, path_document

        click.echo(dumps(path_document(session_path)))
    else:
        from sessiontrace.render.tree import print_path

        print_path(session_path)


def _join_audit_log(session_path: SessionPath, audit_db: str) -> None:
    try:
        from sessiontrace.sources.audit import AuditLogError, load_changes
    except ImportError:
        _fail("--audit-db needs SQLAlchemy: pip install 'sessiontrace[audit]'", EXIT_USAGE)
    from sessiontrace.path import attach_changes

    try:
        attach_changes(session_path, load_changes(audit_db, session_path.trace_ids))
    except AuditLogError as exc:
        _fail(str(exc), EXIT_STORE)


@main.command()
@click.option(
    "--audit-db",
    metavar="URL",
    help="Where the demo keeps its audited records: a SQLAlchemy URL (SQLite or PostgreSQL) or a SQLite file."
    " [default: claims-audit.sqlite3 next to the store]",
)
@_store_after_command
@click.pass_obj
def demo(store_path: Path, audit_db: str | None) -> None:
    """Run a small multi-service demo into the store and show its session path.

    \b
    Exit codes:
      0  the demo ran and its paths are shown
      1  it ran, but the audit log could not be read (changes shown from the spans)
      2  usage error: the demo extra is missing, --audit-db is not a database
      3  a demo service could not start or failed (its cause is printed)
    """
    _check_store_file(store_path)
    from sessiontrace.demo import run_demo

    sys.exit(run_demo(store_path, audit_db))


@main.group()
def audit() -> None:
    """Set up, verify, checkpoint and revert the audit log of database changes."""


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
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
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


EXIT_BROKEN = 1
EXIT_NOT_CHAINED = 3
EXIT_REFUSED = 3
EXIT_DATABASE = 4

_DB_OPTION = click.option(
    "--db",
    "url",
    required=True,
    envvar="SESSIONTRACE_AUDIT_DB",
    help="PostgreSQL URL, SQLite URL or SQLite file. [env: SESSIONTRACE_AUDIT_DB]",
)
_TABLE_OPTION = click.option("--table", "audit_table", default="audit_log", show_default=True, help="Audit log table.")
_SCHEMA_OPTION = click.option(
    "--schema", metavar="NAME", help="Schema of the audit log. [default: search_path's first]"
)


@contextmanager
def _audit_log_errors(engine: Engine, shown: str) -> Iterator[None]:
    """What every command reading the audit log reports alike; the engine is disposed after."""
    from sqlalchemy.exc import SQLAlchemyError

    from sessiontrace.audit.verify import KeyUnavailableError, NotChainedError

    try:
        yield
    except NotChainedError as exc:
        _fail(f"{shown}: {exc}", EXIT_NOT_CHAINED)
    except KeyUnavailableError as exc:
        _fail(str(exc), EXIT_USAGE)
    except SQLAlchemyError as exc:
        _fail(f"{shown}: {_db_reason(exc)}", EXIT_DATABASE)
    finally:
        engine.dispose()


@audit.command(name="verify")
@_DB_OPTION
@click.option(
    "--key-env",
    metavar="VAR",
    help="Environment variable holding the chain's HMAC key. [default: on PostgreSQL the installed key, "
    "readable by the log's owner or a superuser; on SQLite the empty key]",
)
@_TABLE_OPTION
@_SCHEMA_OPTION
@click.option(
    "--checkpoints",
    "checkpoints_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Also check the signed checkpoints in this directory (`sessiontrace audit checkpoint`).",
)
@click.option("--checkpoint-key-env", metavar="VAR", help="Environment variable holding the checkpoints' key.")
def audit_verify(
    url: str,
    key_env: str | None,
    audit_table: str,
    schema: str | None,
    checkpoints_dir: Path | None,
    checkpoint_key_env: str | None,
) -> None:
    """Verify the audit log's hash chain, row by row in seq order, and signed checkpoints.

    \b
    Exit codes:
      0  the chain is intact (and every checkpoint holds)
      1  tampering: the first broken row's seq and reason are printed
         (hash mismatch: modified; seq gap: deleted; prev_hash mismatch:
         inserted or reordered; checkpoint ...: rewritten and re-chained)
      2  usage error (options, URL, key variable, unreadable installed key)
      3  not chained: no audit log table, or rows whose seq is NULL
      4  the database could not be reached or read
    """
    key = _env_key("--key-env", key_env) if key_env else None
    checkpoint_key: bytes | None = None
    if checkpoints_dir is not None:
        if not checkpoint_key_env:
            _fail("--checkpoints needs --checkpoint-key-env (the key the checkpoints were signed with)", EXIT_USAGE)
        checkpoint_key = _env_key("--checkpoint-key-env", checkpoint_key_env)
    engine, shown = _audit_engine(url)

    from sessiontrace.audit.verify import verify

    with _audit_log_errors(engine, shown):
        report = verify(
            engine,
            key=key,
            audit_table=audit_table,
            schema=schema,
            checkpoints=checkpoints_dir,
            checkpoint_key=checkpoint_key,
        )
    if report.broken is not None:
        _fail(report.summary(), EXIT_BROKEN)
    if report.unchained_rows:
        _fail(report.summary(), EXIT_NOT_CHAINED)
    click.echo(f"{report.summary()} ({report.rows_per_second:,.0f} rows/s)")


@audit.command(name="checkpoint")
@_DB_OPTION
@click.option(
    "--key-env",
    metavar="VAR",
    required=True,
    help="Environment variable holding the checkpoint signing key (kept outside the database).",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of checkpoints (created if missing); the new one links to the newest there.",
)
@click.option(
    "--chain-key-env", metavar="VAR", help="Environment variable holding the chain's key. [default: as verify]"
)
@click.option("--no-verify", is_flag=True, help="Do not verify the rows since the previous checkpoint first.")
@_TABLE_OPTION
@_SCHEMA_OPTION
def audit_checkpoint(
    url: str,
    key_env: str,
    out_dir: Path,
    chain_key_env: str | None,
    no_verify: bool,
    audit_table: str,
    schema: str | None,
) -> None:
    """Write a signed checkpoint of the audit log's head (seq, row_hash) into --out.

    \b
    Exit codes:
      0  written (its path is printed)
      1  refused: the chain or the existing checkpoints do not hold
      2  usage error
      3  not chained: no audit log table, or rows whose seq is NULL
      4  the database could not be reached or read
    """
    signing_key = _env_key("--key-env", key_env)
    chain_key = _env_key("--chain-key-env", chain_key_env) if chain_key_env else None
    engine, shown = _audit_engine(url)

    from sessiontrace.audit.checkpoint import CheckpointError, write_checkpoint

    with _audit_log_errors(engine, shown):
        try:
            checkpoint, path = write_checkpoint(
                engine,
                out_dir,
                signing_key=signing_key,
                chain_key=chain_key,
                audit_table=audit_table,
                schema=schema,
                verify_chain=not no_verify,
            )
        except CheckpointError as exc:
            _fail(str(exc), EXIT_BROKEN)
        except OSError as exc:
            _fail(f"--out {out_dir}: {exc}", EXIT_USAGE)
    click.echo(f"checkpoint of {checkpoint.table} at seq {checkpoint.seq}: {path}")


def _month(ctx: click.Context, param: click.Parameter, value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a month (YYYY-MM)") from None


@audit.command(name="retire")
@_DB_OPTION
@click.option(
    "--before",
    required=True,
    metavar="YYYY-MM",
    callback=_month,
    help="Retire the months before this one (UTC); the current month always stays.",
)
@click.option(
    "--checkpoints",
    "checkpoints_dir",
    required=True,
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of signed checkpoints: the retirement is recorded there before anything is dropped.",
)
@click.option("--checkpoint-key-env", metavar="VAR", required=True, help="Environment variable holding their key.")
@click.option(
    "--chain-key-env", metavar="VAR", help="Environment variable holding the chain's key. [default: as verify]"
)
@click.option("--dry-run", is_flag=True, help="Only print the partitions that would be dropped.")
@_TABLE_OPTION
@_SCHEMA_OPTION
def audit_retire(
    url: str,
    before: date,
    checkpoints_dir: Path,
    checkpoint_key_env: str,
    chain_key_env: str | None,
    dry_run: bool,
    audit_table: str,
    schema: str | None,
) -> None:
    """Drop a partitioned audit log's monthly partitions before --before, so that `audit verify
    --checkpoints` still holds: the chain is verified and the retirement signed first.

    \b
    Exit codes:
      0  retired (or, with --dry-run, listed)
      1  refused: the chain or the checkpoints do not hold, months interleave in the chain,
         or the log's newest row would go
      2  usage error (options, URL, key variables; the log is not partitioned)
      3  not chained: no audit log table
      4  the database could not be reached, read or changed (dropping needs the log's owner)
    """
    signing_key = _env_key("--checkpoint-key-env", checkpoint_key_env)
    chain_key = _env_key("--chain-key-env", chain_key_env) if chain_key_env else None
    engine, shown = _audit_engine(url)

    from sessiontrace.audit.checkpoint import CheckpointError
    from sessiontrace.audit.errors import AuditSetupError
    from sessiontrace.audit.retention import RetentionError, retire_partitions

    with _audit_log_errors(engine, shown):
        try:
            retirement = retire_partitions(
                engine,
                before,
                checkpoints_dir,
                signing_key=signing_key,
                chain_key=chain_key,
                audit_table=audit_table,
                schema=schema,
                dry_run=dry_run,
            )
        except AuditSetupError as exc:
            _fail(str(exc), EXIT_USAGE)
        except (CheckpointError, RetentionError) as exc:
            _fail(str(exc), EXIT_BROKEN)
        except OSError as exc:
            _fail(f"--checkpoints {checkpoints_dir}: {exc}", EXIT_USAGE)
    if not retirement.partitions:
        click.echo(f"no partition before {before:%Y-%m}: nothing to retire")
        return
    verb = "would drop" if dry_run else "dropped"
    through = f"; rows up to seq {retirement.retired_through}" if retirement.retired_through else "; no rows"
    recorded = f"; retirement signed in {retirement.checkpoint}" if retirement.checkpoint else ""
    click.echo(f"{verb} {', '.join(retirement.partitions)}{through}{recorded}")


@audit.command(name="revert")
@click.argument("session_id")
@_DB_OPTION
@click.option("--dry-run", is_flag=True, help="Show what would be undone and the conflicts; change nothing.")
@click.option(
    "--force", is_flag=True, help="Revert even over later sessions' changes; leave masked values as they are."
)
@click.option(
    "--key-env", metavar="VAR", help="Environment variable holding the chain's key (SQLite; PostgreSQL ignores it)."
)
@click.option("--user", "user_id", metavar="ID", help="Who is reverting (user.id of the revert session).")
@_TABLE_OPTION
@_SCHEMA_OPTION
def audit_revert(
    session_id: str,
    url: str,
    dry_run: bool,
    force: bool,
    key_env: str | None,
    user_id: str | None,
    audit_table: str,
    schema: str | None,
) -> None:
    """Undo every change SESSION_ID made, newest first, in one transaction, as a new audited session.

    \b
    Exit codes:
      0  reverted (with --dry-run: would revert)
      1  the audit log has no change by SESSION_ID
      2  usage error (SESSION_ID is not a UUID, options, URL)
      3  refused: later sessions changed the same fields, or values to restore
         were recorded masked (--force reverts the rest anyway)
      4  the database could not be reached, or the revert failed (rolled back)
    """
    from sessiontrace._values import InvalidValue
    from sessiontrace._values import session_id as valid_session_id

    try:
        session_id = valid_session_id(session_id)
        if user_id is not None:
            from sessiontrace._values import user_id as valid_user_id

            user_id = valid_user_id(user_id)
    except InvalidValue as exc:
        raise click.BadParameter(str(exc)) from exc
    key = _env_key("--key-env", key_env) if key_env else None
    engine, shown = _audit_engine(url)

    from sqlalchemy.exc import SQLAlchemyError

    from sessiontrace.audit.revert import RevertError, RevertRefusedError, SessionNotFoundError, revert_session

    try:
        plan = revert_session(
            engine,
            session_id,
            dry_run=dry_run,
            force=force,
            key=key,
            audit_table=audit_table,
            schema=schema,
            user_id=user_id,
        )
    except SessionNotFoundError as exc:
        _fail(str(exc), EXIT_NOT_FOUND)
    except RevertRefusedError as exc:
        _print_plan(exc.plan)
        _fail(str(exc), EXIT_REFUSED)
    except RevertError as exc:
        _fail(f"{exc} (nothing was changed)", EXIT_DATABASE)
    except SQLAlchemyError as exc:
        _fail(f"{shown}: {_db_reason(exc)} (nothing was changed)", EXIT_DATABASE)
    finally:
        engine.dispose()
    _print_plan(plan)
    if dry_run:
        if plan.refused:
            _fail("dry run: the revert would be refused", EXIT_REFUSED)
        click.echo(f"dry run: {len(plan.operations)} change(s) would be undone; nothing was changed")
    else:
        click.echo(
            f"reverted {len(plan.operations)} change(s) of session {plan.session_id}"
            f" in session {plan.revert_session_id}"
        )


def _print_plan(plan: object) -> None:
    from sessiontrace.audit.revert import RevertPlan
    from sessiontrace.render._format import escape

    assert isinstance(plan, RevertPlan)
    # Escaped: the plan shows stored names and values, which must not drive the terminal.
    for operation in plan.operations:
        click.echo(escape(f"  {operation}"))
    for conflict in plan.conflicts:
        click.echo(escape(f"conflict: {conflict}"), err=True)
    for blocker in plan.blockers:
        click.echo(escape(f"cannot restore: {blocker}"), err=True)
    for note in plan.skipped:
        click.echo(escape(f"forced: {note}"), err=True)


def _env_key(option: str, variable: str) -> bytes:
    import os

    value = os.environb.get(variable.encode())
    if not value:
        _fail(f"{option} {variable}: the variable is not set or empty", EXIT_USAGE)
    return value


def _audit_engine(url: str) -> tuple[Engine, str]:
    """An engine for --db (PostgreSQL through psycopg 3, or SQLite: a URL or a file, as
    ``path --audit-db`` takes it), and the URL to show."""
    from sqlalchemy import create_engine

    from sessiontrace.sources.audit import AuditLogError, database_url

    try:
        parsed = database_url(url)
    except AuditLogError:
        _fail("--db is not a database URL (postgresql://user@host:5432/dbname or sqlite:///file)", EXIT_USAGE)
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        _fail(f"--db must be a PostgreSQL or SQLite URL, not {backend}", EXIT_USAGE)
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            if not database.startswith("file:"):
                _fail("--db: an in-memory SQLite database has no audit log", EXIT_USAGE)
        elif not Path(database).is_file():
            _fail(f"--db: no SQLite database at {database}", EXIT_DATABASE)
    return create_engine(parsed), parsed.render_as_string(hide_password=True)


def _db_reason(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


def _valid_session_id(value: str) -> str:
    """A session id as the store may hold it: a UUID (any case), or any id that other
    instrumentation set, of 1 to ``MAX_SESSION_ID`` printable characters."""
    from sessiontrace._values import shown

    if not is_listed_session_id(value.lower()):  # as the store files and looks ids up
        raise click.BadParameter(
            f"a session id is 1 to {MAX_SESSION_ID} printable characters, got {shown(value)}",
            param_hint="SESSION_ID",
        )
    return value


def _tolerant_output() -> None:
    """On a terminal or pipe whose encoding is not UTF-8 (``PYTHONIOENCODING=ascii``, a latin-1
    locale), characters it cannot encode are printed as ``?`` rather than crashing the command."""
    import io

    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper) and stream.errors == "strict":
            encoding = (stream.encoding or "").lower().replace("-", "").replace("_", "")
            if encoding not in ("utf8", "utf16", "utf32"):
                stream.reconfigure(errors="replace")


def _check_store_file(store_path: Path) -> None:
    """Refuse a store that exists but is not a regular file: SQLite would block forever opening a
    FIFO, and fail obscurely on a directory or a device."""
    import os
    import stat

    try:
        mode = os.stat(store_path).st_mode
    except FileNotFoundError:
        return  # opening says there is no store; the demo creates it
    except OSError as exc:
        _fail(f"--store {store_path}: {exc.strerror or exc}", EXIT_STORE)
    if not stat.S_ISREG(mode):
        _fail(f"--store {store_path} is not a regular file (a span store is a SQLite file)", EXIT_STORE)


def _open_store(store_path: Path) -> SpanStore:
    from sessiontrace.store import SpanStore, StoreError, StoreNotFound

    _check_store_file(store_path)
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
    from sessiontrace.render._format import escape

    # It may quote stored values or arguments: escaped, line by line.
    click.echo("sessiontrace: " + "\n".join(escape(line) for line in message.split("\n")), err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
