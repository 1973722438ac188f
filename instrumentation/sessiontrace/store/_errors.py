"""Why a store cannot be opened, in words a user can act on.

The subclasses let the exporter pick a fallback (move a corrupt file aside, write elsewhere when
the path is read-only, retry when the disk is full) or leave a file alone (another program's
database, a newer schema); readers just print the message.
"""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """The span store cannot be used; the message says why and names the file."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class StoreNotFound(StoreError):
    """A reader asked for a store file that does not exist."""


class StoreCorrupt(StoreError):
    """The file is not a SQLite database, is damaged, or is some other program's database."""


class StoreForeign(StoreCorrupt):
    """The file is a readable SQLite database, but another program's: it must never be moved or written."""


class StoreTooNew(StoreError):
    """The store was written by a newer sessiontrace with a schema this version cannot read."""


class StoreNotWritable(StoreError):
    """The store file or its directory cannot be written."""


class StoreBusy(StoreError):
    """Another process held the store's write lock for longer than we wait; it may free up later."""


class StoreUnavailable(StoreError):
    """The disk is full or failed an I/O, or the file vanished while being opened: it may pass."""
