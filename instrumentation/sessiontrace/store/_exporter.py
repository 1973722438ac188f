"""A SpanExporter that writes into the embedded store, for use under ``BatchSpanProcessor``.

Telemetry must never take the application down, so every failure becomes one logged warning and
``SpanExportResult.FAILURE``. When the file is unusable the exporter picks the safe way forward
itself: a file SQLite cannot read is moved aside (kept for forensics) and a fresh store started,
under a lock so that processes starting together move it only once; another program's SQLite
database, or a store of a newer schema, is left untouched and exporting stops; an unwritable path
falls back to a per-user store in the temp directory; a full disk, an I/O error or a busy lock is
retried at the next export. A store file removed or replaced while the application runs is
noticed at the next batch and reopened, and a forked child starts with its own lock and connection.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sessiontrace.store._errors import (
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreForeign,
    StoreNotWritable,
    StoreUnavailable,
)
from sessiontrace.store._paths import default_store_path, fallback_store_path
from sessiontrace.store._store import SpanStore

try:
    import fcntl
except ImportError:  # Windows: no flock; moving a corrupt file aside is then not serialised
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("sessiontrace.store")

# Errors that may pass (a lock held, a full disk, a file renamed while we opened it): retry later.
_TRANSIENT = (StoreBusy, StoreUnavailable, OSError)


class StoreSpanExporter(SpanExporter):
    """Export spans into a ``SpanStore`` file (default: ``default_store_path()``).

    The file is opened on the first export, so constructing the exporter costs nothing and an
    application that never ends a span never touches the disk. Thread-safe and fork-safe.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        # Absolute now, not at the first export: the application may change directory meanwhile.
        self.path = (Path(path).expanduser() if path is not None else default_store_path()).absolute()
        self._store: SpanStore | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._disabled = False
        self._shutdown = False
        _EXPORTERS.add(self)

    @property
    def store_path(self) -> Path | None:
        """The file actually written (differs from ``path`` after a fallback), once opened."""
        return self._store.path if self._store is not None else None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            with self._lock:
                if self._shutdown or self._disabled:
                    return SpanExportResult.FAILURE
                store = self._current() or self._open()
                if store is None:
                    return SpanExportResult.FAILURE
                store.write(spans)
            return SpanExportResult.SUCCESS
        except StoreError as exc:
            self._warn_once("write", f"sessiontrace: could not store {len(spans)} spans: {exc}")
        except Exception as exc:  # never into the application
            self._warn_once(
                "write",
                f"sessiontrace: could not store {len(spans)} spans in {self.path}: {type(exc).__name__}: {exc}",
            )
        return SpanExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # Every export is committed before it returns: there is nothing buffered here.
        return True

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except Exception as exc:
                logger.debug("closing the span store failed: %s", exc)

    # -- the open store, while its file is still there ----------------------------------------
    def _current(self) -> SpanStore | None:
        """The open store, or None (closed) when its file was removed or replaced since it was opened.

        Writing on into an unlinked file would succeed and lose every span; one stat per batch
        notices it.
        """
        store = self._store
        if store is None:
            return None
        if _identity(store.path) == self._identity:
            return store
        self._store = self._identity = None
        self._warn_once("reopen", f"sessiontrace: the span store {store.path} was removed or replaced; reopening it")
        try:
            store.close()
        except Exception as exc:
            logger.debug("closing the span store failed: %s", exc)
        return None

    def _before_fork(self) -> None:
        # Fork only between exports: a child forked while this process's SQLite connection is
        # mid-transaction inherits SQLite's in-process lock state (and maybe its mutexes) as held.
        self._lock.acquire()

    def _after_fork_in_parent(self) -> None:
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        # A connection must not cross fork(), and closing it here could disturb the parent's WAL:
        # it is kept open, unused, and the child opens its own. The lock is new, in case the
        # parent's was held anyway (an exporter created while the fork was under way).
        self._lock = threading.Lock()
        if self._store is not None:
            _INHERITED.append(self._store)
        self._store = self._identity = None

    # -- opening, with fallbacks ------------------------------------------------------------
    def _open(self) -> SpanStore | None:
        path = self.path
        store: SpanStore | None = None
        try:
            store = SpanStore(path)
        except StoreForeign as exc:  # another program's database: never move or write it
            self._give_up(f"sessiontrace: span export disabled: {exc}")
        except StoreCorrupt as exc:
            store = self._replace_corrupt(path, exc)
        except StoreNotWritable as exc:
            store = self._fall_back(path, exc)
        except StoreBusy as exc:  # this batch is lost, but the next export tries again
            self._warn_once("busy", f"sessiontrace: could not open the span store, will retry: {exc}")
        except _TRANSIENT as exc:
            self._retry_later(path, exc)
        except StoreError as exc:  # e.g. written by a newer sessiontrace: leave it alone
            self._give_up(f"sessiontrace: span export disabled: {exc}")
        except Exception as exc:
            self._give_up(f"sessiontrace: span export disabled, cannot open {path}: {type(exc).__name__}: {exc}")
        if store is not None:
            self._store, self._identity = store, _identity(store.path)
        return store

    def _replace_corrupt(self, path: Path, exc: StoreCorrupt) -> SpanStore | None:
        try:
            with _exclusive(path):
                # Re-check under the lock: a process that got here first has replaced it already.
                try:
                    return SpanStore(path)
                except StoreForeign:
                    raise
                except StoreCorrupt:
                    pass
                # Unique per process: two asides in one second must not overwrite each other.
                aside = path.with_name(f"{path.name}.corrupt-{time.time_ns()}-{os.getpid()}")
                # Sidecars first: once the main file is gone, a fresh store's own -wal may appear.
                for suffix in ("-wal", "-shm"):
                    with suppress(FileNotFoundError):
                        os.replace(path.with_name(path.name + suffix), aside.with_name(aside.name + suffix))
                os.replace(path, aside)
                store = SpanStore(path)
        except StoreForeign as again:
            self._give_up(f"sessiontrace: span export disabled: {again}")
            return None
        except _TRANSIENT as again:
            self._retry_later(path, again)
            return None
        except StoreError as again:
            self._give_up(f"sessiontrace: span export disabled: {exc}; moving it aside failed: {again}")
            return None
        self._warn_once(
            "open",
            f"sessiontrace: {exc}; moved it to {aside} and started a fresh store at {path}",
        )
        return store

    def _fall_back(self, path: Path, exc: StoreNotWritable) -> SpanStore | None:
        fallback = fallback_store_path()
        try:
            store = SpanStore(fallback)
        except _TRANSIENT as again:
            self._retry_later(fallback, again)
            return None
        except StoreError as again:
            self._give_up(f"sessiontrace: span export disabled: {exc}; fallback {fallback}: {again}")
            return None
        self._warn_once("open", f"sessiontrace: {exc}; writing spans to {fallback} instead")
        return store

    def _retry_later(self, path: Path, exc: Exception) -> None:
        reason = exc if isinstance(exc, StoreError) else f"{path}: {type(exc).__name__}: {exc}"
        self._warn_once("retry", f"sessiontrace: could not open the span store, will retry: {reason}")

    def _give_up(self, message: str) -> None:
        self._disabled = True
        self._warn_once("open", message)

    def _warn_once(self, key: str, message: str) -> None:
        # An exporter called every few seconds must not flood the application's log.
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``<store>.lock`` (a sibling: the store itself may be replaced)."""
    if fcntl is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


# Every live exporter, for the fork handlers (registered once per process, not per exporter).
_EXPORTERS: weakref.WeakSet[StoreSpanExporter] = weakref.WeakSet()
# Stores inherited over fork(): referenced so that garbage collection never closes them in the child.
_INHERITED: list[SpanStore] = []


# The exporters whose locks the fork handlers hold: strong references until the fork is over.
_FORKING: list[StoreSpanExporter] = []


def _before_fork() -> None:
    _FORKING[:] = list(_EXPORTERS)
    for exporter in _FORKING:
        exporter._before_fork()


def _after_fork_in_parent() -> None:
    for exporter in _FORKING:
        exporter._after_fork_in_parent()
    _FORKING.clear()


def _after_fork_in_child() -> None:
    for exporter in _FORKING:
        exporter._after_fork_in_child()
    _FORKING.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
