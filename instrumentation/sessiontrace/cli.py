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
