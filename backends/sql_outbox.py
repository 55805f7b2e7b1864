"""The outbox on the SQL backends: a save written through the caller's own SQLAlchemy transaction."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pbuffer.errors import BufferFullError, ConfigurationError
from pbuffer.message import Message
from pbuffer.outbox import caller_connection, same_database

from .counters import tally
from .database import sqlite_path
from .errors import is_missing_table, map_driver_error
from .sql_connections import CallerCursor
from .sql_rows import row_params

if TYPE_CHECKING:
    from .sql import SQLBuffer

__all__ = ["check_same_database", "insert_in_callers_transaction"]


def insert_in_callers_transaction(buffer: SQLBuffer, messages: list[Message], connection: object) -> Any:
    """The outbox (:meth:`pbuffer.Buffer._insert_in`): the rows, their counters and any drops go through the
    caller's transaction.

    Nothing it writes holds a lock another writer waits for: the counters go to a row of this save's own
    (server databases: a shard of its own, see sql_counting); limits take no turn on the limits lock and drop
    only unclaimed, unlocked messages. sqlite just inserts: the rows land in the uncounted tail (see
    Counting.maybe_fold), which the next plain save folds once they are committed.
    """
    conn, target = caller_connection(connection)
    if buffer.serialize_writes:
        raise ConfigurationError(
            f"this sqlite buffer runs in one-writer mode (serialize_writes: sqlite {sqlite3.sqlite_version} "
            "has the WAL-reset bug), and your connection's writes would bypass its lock; nothing was written. "
            "Use a sqlite library without the bug (3.51.3+, 3.50.7+, 3.44.6+), or open the buffer with "
            "serialize_writes=False if only one process writes to the file")
    check_same_database(buffer, conn)
    cursor = CallerCursor(conn, buffer._sql.raw)
    try:
        if buffer.limits.bounded:
            try:
                buffer._make_room(cursor, messages, outbox=True)
            except BufferFullError as exc:
                if buffer.limits.overflow != "block":
                    raise
                raise BufferFullError(f"{exc}; overflow='block' cannot wait inside your transaction (room "
                                      "is made by relays whose deletes your open transaction may need): "
                                      "nothing was written") from None
        cursor.executemany(buffer._sql.insert, [row_params(message) for message in messages])
        if not buffer._lazy:
            buffer._counting.bump(cursor, tally(((m.subject, len(m.payload)) for m in messages), pending=1),
                                outbox=True)
        if buffer._notify_sql:
            cursor.execute(buffer._notify_sql)
    except sa.exc.DBAPIError as exc:
        # The caller's transaction is the caller's to roll back: only the error is ours to map.
        orig = exc.orig if exc.orig is not None else exc
        if is_missing_table(orig):
            raise buffer._tx.schema_changed("save") from exc
        raise map_driver_error(orig, "save") from exc
    return target

def check_same_database(buffer: SQLBuffer, conn: sa.Connection) -> None:
    url = conn.engine.url
    key = url.render_as_string(hide_password=False)
    if key not in buffer._same_database:
        buffer._same_database[key] = same_database(url, buffer.url, sqlite_path)
    reason = buffer._same_database[key]
    if reason is not None:
        raise ConfigurationError(
            f"connection= is not on this buffer's database ({buffer._database.display_url}): {reason}. The outbox "
            "writes the message in your transaction, so it must be the same database (same server and "
            "database name, or the same sqlite file); nothing was written")
