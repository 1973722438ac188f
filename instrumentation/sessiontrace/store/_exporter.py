"""A SpanExporter that writes into the embedded store, for use under ``BatchSpanProcessor``.

Telemetry must never take the application down, so every failure becomes one logged warning and
``SpanExportResult.FAILURE``. When the file is unusable the exporter picks the safe way forward
itself: a corrupt file is moved aside (kept for forensics) and a fresh store started; an
unwritable path falls back to a per-user store in the temp directory.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from sessiontrace.store._errors import StoreBusy, StoreCorrupt, StoreError, StoreNotWritable
from sessiontrace.store._paths import default_store_path, fallback_store_path
from sessiontrace.store._store import SpanStore

logger = logging.getLogger("sessiontrace.store")


class StoreSpanExporter(SpanExporter):
    """Export spans into a ``SpanStore`` file (default: ``default_store_path()``).

    The file is opened on the first export, so constructing the exporter costs nothing and an
    application that never ends a span never touches the disk. Thread-safe.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_store_path()
        self._store: SpanStore | None = None
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._disabled = False
        self._shutdown = False

    @property
    def store_path(self) -> Path | None:
        """The file actually written (differs from ``path`` after a fallback), once opened."""
        return self._store.path if self._store is not None else None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            with self._lock:
                if self._shutdown or self._disabled:
                    return SpanExportResult.FAILURE
                store = self._store or self._open()
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

    # -- opening, with fallbacks ------------------------------------------------------------
    def _open(self) -> SpanStore | None:
        path = self.path
        try:
            self._store = SpanStore(path)
        except StoreCorrupt as exc:
            self._store = self._replace_corrupt(path, exc)
        except StoreNotWritable as exc:
            self._store = self._fall_back(path, exc)
        except StoreBusy as exc:  # this batch is lost, but the next export tries again
            self._warn_once("busy", f"sessiontrace: could not open the span store, will retry: {exc}")
        except StoreError as exc:  # e.g. written by a newer sessiontrace: leave it alone
            self._give_up(f"sessiontrace: span export disabled: {exc}")
        except Exception as exc:
            self._give_up(f"sessiontrace: span export disabled, cannot open {path}: {type(exc).__name__}: {exc}")
        return self._store

    def _replace_corrupt(self, path: Path, exc: StoreCorrupt) -> SpanStore | None:
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):  # they belong to the old file, not the fresh one
                sidecar = path.with_name(path.name + suffix)
                if sidecar.exists():
                    os.replace(sidecar, aside.with_name(aside.name + suffix))
            store = SpanStore(path)
        except (OSError, StoreError) as again:
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
        except (OSError, StoreError) as again:
            self._give_up(f"sessiontrace: span export disabled: {exc}; fallback {fallback}: {again}")
            return None
        self._warn_once("open", f"sessiontrace: {exc}; writing spans to {fallback} instead")
        return store

    def _give_up(self, message: str) -> None:
        self._disabled = True
        self._warn_once("open", message)

    def _warn_once(self, key: str, message: str) -> None:
        # An exporter called every few seconds must not flood the application's log.
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message)
