"""pbuffer's error tree.

Every error pbuffer raises on purpose derives from :class:`PBufferError` (never Python's built-in
``BufferError``), except a payload of the wrong type, which is a plain :class:`TypeError` like anywhere else in
Python. Driver exceptions are wrapped at the storage boundary with ``raise ... from exc``, so the original is
always available as ``__cause__``.

::

    PBufferError
    ├── ConfigurationError        a bad URL, an unknown scheme or option
    ├── ValidationError           (also ValueError) a bad subject, header or argument; nothing was written
    ├── BufferFullError           the buffer's own limits are reached; nothing was written
    ├── StorageFullError          the disk or database is full; nothing was written
    ├── CorruptDatabaseError      damaged storage, or a message whose checksum does not match
    ├── NotABufferDatabaseError   a database that is not pbuffer's (left untouched)
    ├── SchemaTooOldError         the database needs an upgrade first
    ├── SchemaTooNewError         the database was written by a newer pbuffer (left untouched)
    ├── SchemaChangedError        another process migrated the database while this buffer had it open
    ├── PublishError              the transport could not publish
    └── BackendError              any other failure of the storage backend (unreachable, locked, ...)
        └── StoragePermissionError  a file or directory the buffer needs may not be read or written
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BufferFullError",
    "CommitUnknownError",
    "ConfigurationError",
    "CorruptDatabaseError",
    "NotABufferDatabaseError",
    "PBufferError",
    "PublishError",
    "SchemaChangedError",
    "SchemaTooNewError",
    "SchemaTooOldError",
    "StorageFullError",
    "StoragePermissionError",
    "ValidationError",
]


class PBufferError(Exception):
    """Root of every error pbuffer raises on purpose."""


class ConfigurationError(PBufferError, ValueError):
    """The buffer (or relay) was asked for something it cannot be: an unknown URL scheme, option or value. A
    ``ValueError`` too, so code that caught the ``ValueError`` of earlier versions keeps working."""


class ValidationError(PBufferError, ValueError):
    """An argument is invalid (subject, header, id...). Nothing was written."""


class BufferFullError(PBufferError):
    """The buffer's configured limits are reached. Nothing was written."""


class StorageFullError(PBufferError):
    """The disk or database ran out of space. Nothing was written; everything saved before is intact."""


class CorruptDatabaseError(PBufferError):
    """Storage is damaged. ``message_id`` names the message whose checksum failed, when one did."""

    def __init__(self, msg: str, *, message_id: str | None = None) -> None:
        super().__init__(msg)
        self.message_id = message_id


class NotABufferDatabaseError(PBufferError):
    """The database holds something other than a pbuffer buffer. It was not modified."""


class SchemaTooOldError(PBufferError):
    """The database's schema is older than this pbuffer and must be upgraded first (the message says how)."""


class SchemaTooNewError(PBufferError):
    """The database was written by a newer pbuffer. It was not modified; upgrade pbuffer to open it."""


class SchemaChangedError(PBufferError):
    """Another process upgraded (or downgraded) the database while this buffer had it open, to a revision whose
    writers work differently, so this buffer stops: the call that raised changed nothing, and every later call
    raises too. Close it; open the buffer again with a pbuffer that knows the database's revision."""


class PublishError(PBufferError):
    """The transport could not publish a message."""


class BackendError(PBufferError):
    """The storage backend failed for a reason not covered above (unreachable server, lock timeout, ...)."""


class CommitUnknownError(BackendError):
    """The connection to a server database was lost while it committed: whether the transaction was written is
    unknown. A save may be stored (a relay may even have published it); on MariaDB a pop may have removed its
    message, which then reached no caller (PostgreSQL is asked what became of a pop: it returns the message or
    raises a plain error; the relay's claim and delete after the PubAck loses nothing either way). sqlite commits in
    this process and never raises it. After a save, saving the same message again is safe only with its id
    (:meth:`~pbuffer.Buffer.prepare` and :meth:`~pbuffer.Buffer.commit`): JetStream drops the copy by that id."""


class StoragePermissionError(BackendError):
    """This process may not read or write a file or directory the buffer needs (the message names it and the
    permission). A permission problem, not damage: nothing was written and the files were left unchanged."""
