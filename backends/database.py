"""A SQL database that holds (or will hold) a buffer: its engine, its schema lock, and its schema revision.

Shared by :class:`~pbuffer.backends.sql.SQLBuffer` (which checks the revision at every open) and the schema API
(:mod:`pbuffer.schema`: upgrade, downgrade, current, history, check).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

from pbuffer.errors import (
    BackendError,
    ConfigurationError,
    NotABufferDatabaseError,
    PBufferError,
    SchemaTooNewError,
    SchemaTooOldError,
)
from pbuffer.registry import SQL_SCHEMES, display_url

from . import sqlite_file, versioning
from .errors import map_driver_error
from .tables import VERSION_TABLE

__all__ = ["MAX_BUSY_TIMEOUT", "SUPPORTED", "Database", "sqlite_path"]

_log = logging.getLogger("pbuffer.backends.database")

SUPPORTED = SQL_SCHEMES
# Any constants work: they only have to be the same in every pbuffer process.
_PG_LOCK_KEY = 0x70627566  # "pbuf"
_MYSQL_LOCK_NAME = "pbuffer_schema"
#: The MySQL protocol's CLIENT_MULTI_STATEMENTS capability flag (pymysql.constants.CLIENT.MULTI_STATEMENTS).
_CLIENT_MULTI_STATEMENTS = 1 << 16
_DRIVER_EXTRAS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
#: The longest busy_timeout, in seconds (about 24 days): sqlite takes it in milliseconds as a 32-bit int.
MAX_BUSY_TIMEOUT = (2**31 - 1) // 1000


def sqlite_path(url: URL) -> Path:
    """The file a ``sqlite:///`` URL names, absolute with symlinks resolved; refuses URLs that name no file
    (``:memory:``, ``file:``).

    Resolved because everything beside the file is found by name: the write lock file, the backup before a
    migration, what quarantine moves. A buffer opened through a symlink and through its real path must find the
    same ones (two lock files would let two writers run at once).
    """
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ConfigurationError("a sqlite buffer needs a file path (sqlite:///path/to/buffer.db); "
                                 "for a buffer in memory use memory://")
    try:
        return Path(database).expanduser().resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise ConfigurationError(f"cannot resolve the sqlite path {database!r}: {exc}") from exc


class Database:
    """The engine for a buffer's database URL, with sqlite's pragmas and BEGIN handling applied."""

    def __init__(self, url: str | URL, *, durability: str | None = None, busy_timeout: float = 30.0) -> None:
        try:
            self.url = make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise ConfigurationError(f"not a database URL: {display_url(str(url))!r}") from exc
        self.dialect_name = self.url.get_backend_name()
        if self.dialect_name not in SUPPORTED:
            raise ConfigurationError(f"unsupported database {self.dialect_name!r}: pbuffer supports "
                                     f"{', '.join(SUPPORTED)}")
        # Bounded by what sqlite's busy_timeout (a C int of milliseconds) holds; nan and inf fail the test too.
        if (isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float))
                or not 0 <= busy_timeout <= MAX_BUSY_TIMEOUT):
            raise ConfigurationError(f"busy_timeout must be a number of seconds from 0 to {MAX_BUSY_TIMEOUT}, "
                                     f"not {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
        self.sqlite = self.dialect_name == "sqlite"
        if self.sqlite:
            durability = "process" if durability is None else durability
            if durability not in sqlite_file.DURABILITY_SYNCHRONOUS:
                raise ConfigurationError(f"durability must be 'process' or 'power', not {durability!r}")
            self.path = sqlite_path(self.url)
        elif durability is not None:
            raise ConfigurationError(
                f"durability is set by the {self.dialect_name} server (its commit settings), not by pbuffer")
        self.durability = durability
        self.display_url = self.url.render_as_string(hide_password=True)
        self._engine: Engine | None = None
        #: Held around schema transactions when set (sqlite's one-writer mode, see sqlite_file.WriteLock).
        self.write_lock: AbstractContextManager[object] = nullcontext()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = self._create_engine()
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def _create_engine(self) -> Engine:
        # NullPool: buffers keep their own connections (see sql_connections.Connections); the engine only makes them.
        options: dict[str, Any] = {"poolclass": sa.pool.NullPool}
        url = self.url
        if self.sqlite:
            url = self.url.set(database=str(self.path))
            options["connect_args"] = {"timeout": self.busy_timeout, "check_same_thread": False}
        else:
            # The queue's own isolation on every server: MariaDB's default REPEATABLE READ takes gap locks that
            # make competing claims, deletes and counter upserts deadlock one another.
            options["isolation_level"] = "READ COMMITTED"
        try:
            engine = sa.create_engine(url, **options)
        except ImportError as exc:
            extra = _DRIVER_EXTRAS.get(self.dialect_name, "dev")
            # mysql:// alone means MySQLdb to SQLAlchemy; pbuffer's driver (the [mysql] extra) is PyMySQL.
            use = f"use {url.drivername}+pymysql:// and " if url.drivername in ("mysql", "mariadb") else ""
            raise ConfigurationError(f"the driver for {url.drivername} is not installed: "
                                     f"{use}pip install 'pbuffer[{extra}]' ({exc})") from exc
        except sa.exc.ArgumentError as exc:
            raise ConfigurationError(f"bad database URL: {exc}") from exc
        if engine.dialect.name in ("mysql", "mariadb") and engine.dialect.driver == "pymysql":
            @event.listens_for(engine, "do_connect")
            def _multi_statements(_dialect: Any, _record: Any, _args: Any, params: dict[str, Any]) -> None:
                # A relay's delete sends one primary-key statement per row in one round trip (sql_removal): a
                # statement over many rows can wait on rows another transaction holds. Added to the flags
                # SQLAlchemy sets (FOUND_ROWS), not in their place.
                params["client_flag"] = params.get("client_flag", 0) | _CLIENT_MULTI_STATEMENTS

        if self.sqlite:
            synchronous = sqlite_file.DURABILITY_SYNCHRONOUS[self.durability or "process"]
            busy_ms = int(self.busy_timeout * 1000)

            @event.listens_for(engine, "connect")
            def _on_connect(dbapi_connection: Any, _record: Any) -> None:
                sqlite_file.configure_connection(dbapi_connection, synchronous, busy_ms)

            # SQLAlchemy-level transactions (alembic's) take the write lock up front, so they never fail with
            # SQLITE_BUSY half-way (the busy timeout is not honoured for a read lock upgraded to a write lock).
            @event.listens_for(engine, "begin")
            def _on_begin(conn: sa.Connection) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        return engine

    # ------------------------------------------------------------------------------------------- the lock

    @contextmanager
    def schema_transaction(self, where: str) -> Iterator[sa.Connection]:
        """A transaction holding the database's schema lock: one process at a time checks or migrates.

        sqlite: the write lock (BEGIN IMMEDIATE). PostgreSQL: a transaction-scoped advisory lock. MariaDB: a
        named session lock (GET_LOCK), taken before the transaction and released only after it committed,
        since MariaDB's DDL commits as it goes and the version row is written last.
        """
        try:
            with self.write_lock, self.engine.connect() as conn:
                named_lock = not self.sqlite and self.dialect_name != "postgresql"
                if named_lock:
                    got = conn.execute(sa.text("SELECT GET_LOCK(:name, :timeout)"),
                                       {"name": _MYSQL_LOCK_NAME, "timeout": self.busy_timeout}).scalar()
                    conn.commit()
                    if got != 1:
                        raise BackendError(f"{where}: timed out after {self.busy_timeout} s waiting for "
                                           "another process's schema migration")
                try:
                    with conn.begin():
                        if self.dialect_name == "postgresql":
                            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
                        yield conn
                finally:
                    if named_lock:
                        conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": _MYSQL_LOCK_NAME})
                        conn.commit()
        except PBufferError:
            raise
        except (sa.exc.SQLAlchemyError, OSError, sqlite3.Error) as exc:
            raise map_driver_error(exc, where) from exc

    # ------------------------------------------------------------------------------------------ revisions

    def revision_in(self, conn: sa.Connection) -> str | None:
        """The database's revision; ``None`` for an empty database. Refuses databases that are not pbuffer's."""
        tables = set(sa.inspect(conn).get_table_names())
        if VERSION_TABLE not in tables:
            ours = {t for t in tables if t.startswith("pbuffer_")}
            if (self.sqlite and tables - {"sqlite_sequence"}) or ours:
                raise NotABufferDatabaseError(
                    f"{self.display_url} has tables but no {VERSION_TABLE}: it is not a pbuffer buffer; it was "
                    "left unchanged")
            return None
        revision = versioning.current_revision(conn)
        if revision is not None and revision not in versioning.known_revisions():
            raise SchemaTooNewError(
                f"{self.display_url} is at schema revision {revision!r}, unknown to this pbuffer: it was written "
                "by a newer pbuffer. Upgrade pbuffer; the database was left unchanged")
        return revision

    def prepare(self, *, auto_upgrade: bool) -> None:
        """At open: initialise an empty database, upgrade an older one if allowed, refuse anything else.

        Concurrent openers queue on the schema lock and re-read the revision once they hold it, so exactly one
        of them migrates and the others find the head.
        """
        head = versioning.head_revision()
        backup = None
        with self.schema_transaction(f"opening {self.display_url}") as conn:
            revision = self.revision_in(conn)
            if revision == head:
                if not self.sqlite:  # (sqlite files are checked object by object before this)
                    self._check_shape(conn)
                return
            if revision is None:
                _log.info("initialising %s at schema revision %s", self.display_url, head)
                versioning.upgrade_connection(conn, head)
                return
            if not auto_upgrade:
                raise SchemaTooOldError(
                    f"{versioning.too_old(self.display_url, revision, head)}, or open it with auto_upgrade=True")
            backup = self._migrate(conn, revision, head, upgrade=True)
        self._drop_backup(backup)

    def _check_shape(self, conn: sa.Connection) -> None:
        """Refuse, at open, tables at head that something else reshaped: they failed at the first save instead."""
        problems = versioning.shape_problems(conn)
        if problems:
            raise NotABufferDatabaseError(
                f"{self.display_url} is marked as a pbuffer buffer at revision {versioning.head_revision()}, but its "
                f"tables are not pbuffer's: {'; '.join(problems)}. Something else changed them; it was left "
                "unchanged (pbuffer.check(url) lists every difference)")

    def migrate(self, target: str, *, upgrade: bool) -> str:
        """Move the schema to ``target`` (a revision, ``"head"`` or ``"base"``); returns the revision reached."""
        verb = "upgrade" if upgrade else "downgrade"
        goal = versioning.resolve(target)
        with self.schema_transaction(f"{verb} of {self.display_url}") as conn:
            revision = self.revision_in(conn)
            if revision == goal:
                return revision or "base"
            backup = self._migrate(conn, revision, goal, upgrade=upgrade)
        self._drop_backup(backup)
        return goal or "base"

    def _migrate(self, conn: sa.Connection, revision: str | None, goal: str | None, *,
                 upgrade: bool) -> Path | None:
        """Run the migrations inside the caller's transaction; returns the sqlite backup taken first."""
        backup = self._backup(revision) if self.sqlite and revision is not None else None
        _log.warning("migrating %s from schema revision %s to %s%s", self.display_url, revision or "base",
                     goal or "base", f" (backup: {backup})" if backup else "")
        started = time.monotonic()
        if upgrade:
            versioning.upgrade_connection(conn, goal or "base")
        else:
            versioning.downgrade_connection(conn, goal or "base")
        _log.info("migrated %s in %.2f s", self.display_url, time.monotonic() - started)
        return backup

    @staticmethod
    def _drop_backup(backup: Path | None) -> None:
        """Called once the migration committed: the backup has done its job."""
        if backup is not None:
            backup.unlink(missing_ok=True)

    def _backup(self, revision: str) -> Path:
        """A consistent copy of the sqlite file (sqlite's backup API, never a file copy), mode 0600.

        Taken while the caller holds the write lock, so it is exactly what the migration starts from. It stays
        beside the database until the migration commits: a crash or failure mid-way leaves it there.
        """
        backup = self.path.with_name(f"{self.path.name}.backup-{revision}-{time.strftime('%Y%m%dT%H%M%S')}")
        sqlite_file.create_private_file(backup)
        source = sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True, timeout=self.busy_timeout)
        target = sqlite3.connect(backup)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return backup
