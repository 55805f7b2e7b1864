"""The transactional outbox's plumbing: the caller's SQLAlchemy connection, the same-database rule, and wake-ups
at the caller's commit.

A buffer saving "in your own transaction" (``buffer.save(..., connection=conn)``) writes through the caller's
``Connection`` or ORM ``Session`` and never commits, rolls back or closes it. This module finds the Connection
behind what the caller passed, refuses one on another database, and runs the buffer's listeners when (and only
when) the caller's transaction commits.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session

from .errors import ConfigurationError

__all__ = ["after_commit", "caller_connection", "database_family", "same_database"]

# Dialect names that are one database family (a MariaDB server answers mysql:// and mariadb:// alike).
_FAMILY = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}
_DEFAULT_PORT = {"postgresql": 5432, "mysql": 3306}
# Names of this machine's own loopback interface: a buffer opened on 127.0.0.1 and an application on localhost
# reach the same server.
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]", ""}


def caller_connection(connection: object) -> tuple[sa.Connection, Session | sa.Connection]:
    """The SQLAlchemy Connection to write through, and the object whose commit wakes the relay.

    A Session gives the connection of its transaction (beginning it if needed, as any Session use does); a
    Connection is used as it is (SQLAlchemy 2 begins its transaction at the first statement). A Connection in
    AUTOCOMMIT mode is refused: each statement would commit by itself, so the message could outlive a rolled
    back order.
    """
    if isinstance(connection, Session):
        return connection.connection(), connection
    if isinstance(connection, sa.Connection):
        if connection.closed:
            raise ConfigurationError("connection= is closed: pass an open Connection or Session in a transaction")
        # SQLAlchemy 2 answers this from its own state (no round trip); an older one without it is not refused.
        autocommit = getattr(connection, "_is_autocommit_isolation", lambda: False)
        if autocommit():
            raise ConfigurationError("connection= is in AUTOCOMMIT mode: each statement would commit by itself; "
                                     "pass a Connection or Session in a transaction")
        return connection, connection
    kind = type(connection).__name__
    if hasattr(connection, "run_sync"):
        raise ConfigurationError(f"connection= got an asyncio {kind}: use pbuffer.AsyncBuffer.save(..., "
                                 "connection=...) with it")
    raise ConfigurationError(f"connection= must be a SQLAlchemy Connection or ORM Session, not {kind}")


def database_family(url: URL) -> str:
    """``"postgresql"``, ``"mysql"`` (MariaDB and MySQL under either name) or ``"sqlite"``; ``""`` for others."""
    return _FAMILY.get(url.get_backend_name(), "")


def same_database(caller: URL, buffer: URL, sqlite_path: Callable[[URL], Path]) -> str | None:
    """Why ``caller`` is not the buffer's database, or ``None`` when it is: the same server (host and port) and
    database name, or the same sqlite file (``sqlite_path`` resolves a URL's file). The drivers may differ
    (psycopg and asyncpg, say)."""
    family = database_family(caller)
    if family != database_family(buffer):
        return f"it is a {caller.get_backend_name()} database and the buffer's is {buffer.get_backend_name()}"
    if family == "sqlite":
        try:
            path = sqlite_path(caller)
        except ConfigurationError:
            return f"it is not a sqlite file ({caller.database!r})"
        buffer_path = sqlite_path(buffer)
        return None if path == buffer_path else f"it is the sqlite file {path}, the buffer's is {buffer_path}"
    host, port = _host(caller.host), caller.port or _DEFAULT_PORT.get(family)
    buffer_host, buffer_port = _host(buffer.host), buffer.port or _DEFAULT_PORT.get(family)  # same family
    if (host, port) != (buffer_host, buffer_port):
        return f"it is on {caller.host}:{port}, the buffer on {buffer.host}:{buffer_port}"
    if caller.database != buffer.database:
        return f"it is database {caller.database!r}, the buffer's is {buffer.database!r}"
    return None


def _host(host: str | None) -> str:
    name = (host or "").lower()
    return "loopback" if name in _LOOPBACK else name


# Per Session or Connection with an outbox save in its open transaction: the callbacks its commit runs.
_waiting: weakref.WeakKeyDictionary[Any, dict[int, Callable[[], object]]] = weakref.WeakKeyDictionary()
_waiting_lock = threading.Lock()


def after_commit(target: Session | sa.Connection, key: int, callback: Callable[[], object]) -> None:
    """Run ``callback()`` once when ``target``'s transaction commits; forget it when it rolls back.

    ``key`` names the callback (one per buffer), so many saves in one transaction wake once. A Session runs it
    after its COMMIT (``after_commit``), not when a savepoint (``begin_nested``) is released or rolled back (the
    Session fires the same events for those); a Connection's ``commit`` event comes just before the driver's
    COMMIT, which a relay woken by it sees at its next look (PostgreSQL's NOTIFY, sent at the COMMIT, wakes it
    again), and its savepoints have events of their own.
    """
    with _waiting_lock:
        pending = _waiting.get(target)
        if pending is None:
            pending = _waiting[target] = {}
            if isinstance(target, Session):
                event.listen(target, "after_commit", _committed)
                event.listen(target, "after_rollback", _rolled_back)
            else:
                event.listen(target, "commit", _committed)
                event.listen(target, "rollback", _rolled_back)
        pending[key] = callback


def _take(target: object) -> list[Callable[[], object]]:
    with _waiting_lock:
        pending = _waiting.get(target)
        if not pending:
            return []
        callbacks = list(pending.values())
        pending.clear()
        return callbacks


def _committed(target: Any) -> None:
    if _savepoint_ending(target):
        return
    for callback in _take(target):
        callback()


def _rolled_back(target: Any) -> None:
    if not _savepoint_ending(target):
        _take(target)


def _savepoint_ending(target: Any) -> bool:
    """A Session's ``after_commit``/``after_rollback`` fired for a savepoint: its transaction goes on."""
    return isinstance(target, Session) and target.in_nested_transaction()
