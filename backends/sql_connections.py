"""The SQL backend's connections: the keeper of its DBAPI connections, the transaction every operation runs in
(committed on success; on any error rolled back, the connection dropped and the driver's error mapped), and the
cursor face over a caller's own SQLAlchemy connection that the outbox writes through.

The hot paths use their own connections instead of SQLAlchemy's pool, whose per-checkout bookkeeping costs about as
much as a sqlite commit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pbuffer.errors import BackendError, CommitUnknownError, PBufferError, SchemaChangedError

from . import versioning
from .database import Database
from .errors import is_missing_table, is_rolled_back, map_driver_error

__all__ = ["CallerCursor", "Connections", "Transactions"]


class Transactions:
    """Transactions on a buffer's own connections, each under the write lock when it writes."""

    def __init__(self, database: Database, connections: Connections,
                 write_lock: AbstractContextManager[object]) -> None:
        self._database = database
        self._sqlite = database.sqlite
        self.connections = connections
        self.write_lock = write_lock
        self.dbapi_error: type[Exception] = database.engine.dialect.loaded_dbapi.Error

    @contextmanager
    def cursor(self, where: str, write: bool) -> Iterator[Any]:
        """A DBAPI cursor inside one transaction, committed on success and rolled back on any error.

        sqlite: writes start with BEGIN IMMEDIATE (take the write lock first, so the busy timeout applies);
        a lone read runs in sqlite's autocommit mode. Server databases open transactions implicitly.
        """
        # A writer takes its connection under the write lock and gives it back there: a connection made for it
        # runs pragmas that may write, and one closed on the way back may checkpoint.
        with self.write_lock if write else nullcontext():
            conn = self.connections.take(where)
            try:
                cursor = conn.cursor()
                if write and self._sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                self.commit(conn, where)
            except BaseException as exc:
                self.failed(conn, exc, where)
            self.connections.give_back(conn)

    def commit(self, conn: Any, where: str) -> None:
        """``conn.commit()``. On a server database an error there, unless the server says it rolled back, leaves
        the outcome unknown (the connection lost after the COMMIT went out, say): :class:`CommitUnknownError`,
        never the "nothing was written" of other errors. sqlite commits in this process: its errors are known."""
        try:
            conn.commit()
        except self.dbapi_error as exc:
            if self._sqlite or is_rolled_back(exc):
                raise
            orig = getattr(exc, "orig", None) or exc
            raise CommitUnknownError(
                f"{where}: the connection to {self._database.display_url} failed while it committed "
                f"({type(orig).__name__}: {str(orig).strip()}): whether the {where} was written is unknown") from exc

    def failed(self, conn: Any, exc: BaseException, where: str) -> NoReturn:
        """After a failed transaction: drop the connection and raise the error, mapped if the driver's.

        A failed transaction may leave the connection in any state (or dead), so it is rolled back and thrown
        away; SQLITE_FULL in particular may or may not have rolled back by itself (lang_transaction.html).
        """
        lost = connection_lost(conn)
        self.connections.discard(conn)
        if lost:
            # The server went away (a restart, an idle timeout): the idle connections likely went with it, and
            # each would fail one call more. New ones are made as needed.
            self.connections.clear()
        if isinstance(exc, self.dbapi_error):
            if is_missing_table(exc):
                raise self.schema_changed(where) from exc
            raise map_driver_error(exc, where) from exc
        raise exc

    def schema_changed(self, where: str) -> PBufferError:
        """The error for a table of ours that is gone: another process migrated the database under this buffer
        (revision 0003 renames the writers' tables for exactly this), or something else dropped it."""
        try:
            with self._database.engine.connect() as conn:
                revision = versioning.current_revision(conn)
        except (sa.exc.SQLAlchemyError, self.dbapi_error) as exc:
            revision = None
            found = f"its revision could not be read ({type(exc).__name__})"
        else:
            found = f"it is now at revision {revision or 'base (no tables)'}"
        if revision == versioning.head_revision():
            # At our revision and still a table missing: not a migration; something dropped it.
            return BackendError(f"{where}: a table of this buffer is missing from {self._database.display_url} "
                                "although its schema revision is this pbuffer's: something else dropped it")
        return SchemaChangedError(
            f"{where}: another process migrated {self._database.display_url} while this buffer had it open: "
            f"{found}, and this pbuffer writes revision {versioning.head_revision()}. Nothing was written; close "
            "this buffer and open it again with a pbuffer that knows the database's revision")


def connection_lost(conn: Any) -> bool:
    """Whether a server database's DBAPI connection is known to be gone (psycopg: ``broken``; PyMySQL: not
    ``open``)."""
    return bool(getattr(conn, "broken", False)) or getattr(conn, "open", True) is False


class Connections:
    """DBAPI connections made through the engine (so its connect event applies the pragmas), reused last-in
    first-out. The hot paths use these instead of SQLAlchemy's pool, whose per-checkout bookkeeping costs about
    as much as a sqlite commit. ``list.pop`` and ``list.append`` are atomic, so no lock is needed.

    ``ping_after`` (server databases): a connection idle longer than that many seconds is tried with ``SELECT 1``
    before it is used, and replaced if the server dropped it meanwhile (a restart, an idle timeout); one round trip
    after an idle second, none under load.
    """

    def __init__(self, engine: Engine, keep: int, ping_after: float | None = None) -> None:
        self._engine = engine
        self._keep = keep
        self.ping_after = ping_after
        self._idle: list[tuple[Any, float]] = []
        self._closed = False

    def take(self, where: str) -> Any:
        if self._closed:
            # A call that passed the buffer's open check before another thread closed it: refused, nothing done.
            raise BackendError(f"{where}: the buffer was closed (by another thread); nothing was written")
        while True:
            try:
                connection, since = self._idle.pop()
            except IndexError:
                break
            if self.ping_after is None or time.monotonic() - since < self.ping_after or _answers(connection):
                return connection
            self.discard(connection)
        try:
            fairy = self._engine.raw_connection()
        except (sa.exc.SQLAlchemyError, self._engine.dialect.loaded_dbapi.Error) as exc:
            # The engine's connect event (pragmas) raises the driver's own errors: a full disk, a locked file.
            raise map_driver_error(exc, where) from exc
        connection = fairy.dbapi_connection
        fairy.detach()  # ours from now on; the engine's pool forgets it
        return connection

    def give_back(self, connection: Any) -> None:
        if self._closed or len(self._idle) >= self._keep:
            connection.close()
        else:
            self._idle.append((connection, 0.0 if self.ping_after is None else time.monotonic()))

    def discard(self, connection: Any) -> None:
        # It is being thrown away: the error that brought us here is the one that matters.
        with suppress(Exception):
            connection.rollback()
        with suppress(Exception):
            connection.close()

    def clear(self) -> None:
        """Close the idle connections; the next user gets a new one."""
        while self._idle:
            try:
                connection, _ = self._idle.pop()
            except IndexError:  # another thread took the last one
                break
            self.discard(connection)

    def close(self) -> None:
        self._closed = True
        self.clear()


def _answers(connection: Any) -> bool:
    """Whether an idle server connection still works (a round trip, rolled back)."""
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        cursor.fetchall()
        connection.rollback()
    except Exception:
        return False
    return True


class CallerCursor:
    """The DBAPI-cursor face that the shared steps (making room, bumping the counters) use, over a caller's
    SQLAlchemy Connection.

    Statements run as ``text()`` of their dialect-neutral SQL, so SQLAlchemy compiles them for the caller's
    dialect and driver (psycopg or asyncpg, say), which may differ from the buffer's.
    """

    def __init__(self, connection: sa.Connection, raw: dict[str, str]) -> None:
        self._connection = connection
        self._raw = raw
        self._result: Any = None

    def execute(self, sql: str, params: Any = None) -> None:
        self._result = self._connection.execute(sa.text(self._raw.get(sql, sql)), params or {})

    def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        self._result = self._connection.execute(sa.text(self._raw.get(sql, sql)), rows)

    def fetchone(self) -> Any:
        return self._result.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._result.fetchall())

