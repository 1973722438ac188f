"""The embedded span store: a SQLite file that exporters write and the CLI reads back."""

from __future__ import annotations

from sessiontrace.records import SessionSummary, StoredEvent, StoredLink, StoredSpan
from sessiontrace.store._errors import (
    StoreBusy,
    StoreCorrupt,
    StoreError,
    StoreForeign,
    StoreNotFound,
    StoreNotWritable,
    StoreTooNew,
    StoreUnavailable,
)
from sessiontrace.store._exporter import StoreSpanExporter
from sessiontrace.store._paths import default_store_path, fallback_store_path
from sessiontrace.store._schema import SCHEMA_VERSION
from sessiontrace.store._store import SpanStore

__all__ = [
    "SCHEMA_VERSION",
    "SessionSummary",
    "SpanStore",
    "StoreBusy",
    "StoreCorrupt",
    "StoreError",
    "StoreForeign",
    "StoreNotFound",
    "StoreNotWritable",
    "StoreSpanExporter",
    "StoreTooNew",
    "StoreUnavailable",
    "StoredEvent",
    "StoredLink",
    "StoredSpan",
    "default_store_path",
    "fallback_store_path",
]
