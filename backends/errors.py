"""Driver exceptions mapped once, at the storage boundary, into pbuffer's error tree."""

from __future__ import annotations

import re

from pbuffer.errors import BackendError, CorruptDatabaseError, PBufferError, StorageFullError, ValidationError

__all__ = ["ALREADY_PENDING", "ALREADY_STORED", "is_missing_table", "is_rolled_back", "map_driver_error"]

#: A save whose message id is already in the buffer (the unique index on the messages' ids refused it).
ALREADY_STORED = ("save: a message with this id is already in the buffer (a prepared message committed twice?); "
                  "nothing was written")
#: A requeue of a dead letter whose id a pending message has (the same prepared message committed again).
ALREADY_PENDING = ("requeue: a pending message has this dead letter's id (the same message committed again?); it "
                   "stays a dead letter")

# The unique key on the messages' ids in MariaDB's duplicate-entry message (newer servers name its table too).
_MYSQL_ID_KEY = re.compile(r"for key '(?:\w+\.)?id'$")
# MariaDB/MySQL error codes: ER_RECORD_FILE_FULL, ER_DISK_FULL, ER_OUT_OF_RESOURCES.
_MYSQL_FULL = {1114, 1021, 3, 1041}
_MYSQL_CORRUPT = {1034, 1035, 145, 1194, 1195}
_SQLITE_FULL = ("database or disk is full",)
_SQLITE_CORRUPT = ("malformed", "not a database", "file is encrypted")
# Raised by Python's sqlite3 module (not sqlite) when a TEXT value is not UTF-8.
_SQLITE_UNDECODABLE = "could not decode to utf-8"


def is_missing_table(exc: BaseException) -> bool:
    """Whether a driver error says a table the statement named does not exist (sqlite, PostgreSQL, MariaDB)."""
    orig = getattr(exc, "orig", None) or exc
    module = type(orig).__module__
    if module.startswith("sqlite3"):
        return str(orig).startswith("no such table")
    if module.startswith("psycopg"):
        return getattr(orig, "sqlstate", None) == "42P01"  # undefined_table
    if module.startswith("pymysql"):
        return bool(orig.args) and orig.args[0] == 1146  # ER_NO_SUCH_TABLE
    return False


def is_rolled_back(exc: BaseException) -> bool:
    """Whether a server database's error at COMMIT says the transaction was rolled back (a serialization failure,
    a deadlock, a deferred constraint), as opposed to a commit whose outcome is unknown (the connection lost)."""
    orig = getattr(exc, "orig", None) or exc
    module = type(orig).__module__
    if module.startswith("psycopg"):
        sqlstate = getattr(orig, "sqlstate", None) or ""
        return sqlstate.startswith(("40", "23"))  # transaction rollback, integrity constraint violation
    if module.startswith("pymysql"):
        return bool(orig.args) and orig.args[0] in (1213, 1205)  # ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
    return False


def _id_taken(orig: BaseException, module: str, text: str) -> bool:
    """Whether a save's error is the unique index on the messages' ids (the only unique key a save can hit)."""
    if module.startswith("sqlite3"):
        return text.startswith("UNIQUE constraint failed: pbuffer_messages_") and text.endswith(".id")
    if module.startswith("psycopg"):
        constraint = getattr(getattr(orig, "diag", None), "constraint_name", None) or ""
        return getattr(orig, "sqlstate", None) == "23505" and constraint.endswith("_id_key")
    if module.startswith("pymysql"):
        # The server's message itself (args[1]): str() of the error is the args' repr, whose quoting changes with
        # the id's bytes (a '"' among them escaped the quotes round the key's name).
        message = str(orig.args[1]) if len(orig.args) > 1 else ""
        return orig.args[0] == 1062 and _MYSQL_ID_KEY.search(message) is not None
    return False


def map_driver_error(exc: BaseException, where: str) -> PBufferError:
    """The pbuffer error for a driver (or SQLAlchemy) exception; raise it ``from exc``."""
    orig = getattr(exc, "orig", None) or exc  # SQLAlchemy's DBAPIError wraps the driver's exception
    text = str(orig).strip() or type(orig).__name__
    module = type(orig).__module__
    if where in ("save", "requeue") and _id_taken(orig, module, text):
        return ValidationError(ALREADY_STORED if where == "save" else ALREADY_PENDING)
    if module.startswith("sqlite3"):
        lowered = text.lower()
        if any(marker in lowered for marker in _SQLITE_FULL):
            return StorageFullError(f"{where}: storage is full ({text}); nothing was written")
        if any(marker in lowered for marker in _SQLITE_CORRUPT):
            return CorruptDatabaseError(f"{where}: the database is damaged ({text})")
        if lowered.startswith(_SQLITE_UNDECODABLE):
            # pbuffer stores only valid UTF-8 text, so text that does not decode was damaged on disk (a scrambled
            # page can hand a payload's bytes back as a subject). The driver's message quotes those bytes, which
            # may be payload: it stays on __cause__, out of the message that reaches logs.
            return CorruptDatabaseError(f"{where}: the database is damaged (a stored text column is not valid "
                                        "UTF-8)")
        if "locked" in lowered or "busy" in lowered:
            return BackendError(f"{where}: the database stayed locked past the busy timeout ({text})")
    elif module.startswith("psycopg"):
        sqlstate = getattr(orig, "sqlstate", None) or ""
        if sqlstate.startswith("53"):  # insufficient resources: disk full, out of memory, too many connections
            return StorageFullError(f"{where}: the server is out of resources ({text}); nothing was written")
        if sqlstate.startswith("XX"):
            return CorruptDatabaseError(f"{where}: the server reports damaged data ({text})")
    elif module.startswith("pymysql"):
        code = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
        if code in _MYSQL_FULL:
            return StorageFullError(f"{where}: the server is out of space ({text}); nothing was written")
        if code in _MYSQL_CORRUPT:
            return CorruptDatabaseError(f"{where}: the server reports damaged data ({text})")
    return BackendError(f"{where}: {type(orig).__name__}: {text}")
