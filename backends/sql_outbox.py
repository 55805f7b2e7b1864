"""The outbox on the SQL backends: a save written through the caller's own SQLAlchemy transaction."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pbuffer.errors import BufferFullError, ConfigurationError
from pbuffer.message import Message
from pbuffer.outbox import caller_connection, database_family, same_database

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
    (server databases: a shard of its own, see sql_counting). On a server database the limits make room in a
    transaction of the buffer's own, committed before the caller's rows are written: rows dropped in the caller's
    transaction stayed locked until it ended, relays claimed the messages behind them meanwhile, and a rollback
    brought them back behind what had been published (found by trying to break it). A caller's rollback leaves
    that drop standing (counted in ``dropped``). sqlite just inserts (the caller's transaction holds sqlite's one
    write lock, so no relay claims meanwhile): the rows land in the uncounted tail (see Counting.maybe_fold), which
    the next plain save folds once they are committed.
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
                if buffer._sqlite:
                    # The write lock before the counters are read (see Statements.begin_writing).
                    cursor.execute(buffer._sql.begin_writing)
                    buffer._make_room(cursor, messages)
                else:
                    with buffer._tx.cursor("save", write=True) as own:
                        buffer._make_room(own, messages)
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

# What a server says it is: the database this connection is on, and the server (PostgreSQL: its port and start
# time; MariaDB: host name, port and data directory). Asked of the server because a URL can name the buffer's
# database and connect elsewhere: a driver option in its query string, the driver's environment (PGHOST, PGPORT),
# an option file. Read once per connection (kept in its info, which lives as long as the driver's connection).
_IDENTITY = {
    # (the start time in seconds since the epoch, as text: the same whatever the session's TimeZone or driver)
    "postgresql": "SELECT current_database(), current_setting('port'), "
                  "CAST(EXTRACT(EPOCH FROM pg_postmaster_start_time()) AS TEXT)",
    "mysql": "SELECT DATABASE(), @@hostname, @@port, @@datadir",
}
_IDENTITY_KEY = "pbuffer_server_identity"


def check_same_database(buffer: SQLBuffer, conn: sa.Connection) -> None:
    url = conn.engine.url
    key = url.render_as_string(hide_password=False)
    if key not in buffer._same_database:
        buffer._same_database[key] = same_database(url, buffer.url, sqlite_path)
    reason = buffer._same_database[key]
    family = database_family(url)
    identity_sql = _IDENTITY.get(family) if family == database_family(buffer.url) else None
    if identity_sql is not None:
        # A server of the buffer's family: the servers' own answers decide (a host under another name is
        # accepted, a URL that connects elsewhere is refused).
        theirs = conn.info.get(_IDENTITY_KEY)
        if theirs is None:
            theirs = conn.info[_IDENTITY_KEY] = tuple(str(value) for value in conn.exec_driver_sql(identity_sql).one())
        if buffer._server_identity is None:
            with buffer._tx.cursor("save", write=False) as cursor:
                cursor.execute(identity_sql)
                buffer._server_identity = tuple(str(value) for value in cursor.fetchone())
        mine = buffer._server_identity
        reason = None if theirs == mine else reason or (
            f"the server says it is {_describe(family, theirs)}, the buffer's is {_describe(family, mine)}")
    if reason is not None:
        raise ConfigurationError(
            f"connection= is not on this buffer's database ({buffer._database.display_url}): {reason}. The outbox "
            "writes the message in your transaction, so it must be the same database (same server and "
            "database name, or the same sqlite file); nothing was written")


def _describe(family: str, identity: tuple[str, ...]) -> str:
    if family == "postgresql":
        return f"database {identity[0]!r} on port {identity[1]} (a server started at {identity[2]} s since 1970)"
    return f"database {identity[0]!r} on {identity[1]}:{identity[2]} (data in {identity[3]})"
