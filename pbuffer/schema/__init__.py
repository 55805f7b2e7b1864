"""The buffer schema's history and its moves, for SQL backends: ``pbuffer.upgrade``, ``downgrade``, ``current``,
``history``, ``check`` (also ``pbuffer db ...`` on the command line).

Each takes a database URL as :func:`pbuffer.open` does. Upgrades and downgrades hold the database's schema lock,
run inside one transaction where the database allows it (sqlite, PostgreSQL; not MariaDB, whose DDL commits as it
goes), and on sqlite take a backup with sqlite's backup API first, kept beside the file until the move committed.
An upgrade never goes back and a downgrade never goes forward: both are refused before anything is touched.

Looking never changes anything: ``current``, ``history`` and ``check`` (and :func:`require_buffer`, which the
read-only commands call before they open a buffer) read a sqlite file through a read-only connection and a server
database without writing, so they never create, initialise or migrate a buffer.

:func:`alembic_include_name` and :func:`alembic_include_object` keep an application's own alembic autogenerate away
from pbuffer's tables when both share a database.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, SchemaTooOldError
from ..registry import parse_options

if TYPE_CHECKING:
    import sqlalchemy as sa

    # mypy cannot follow the installed mapping of backends/ to pbuffer.backends: Database is Any to it.
    from ..backends.database import Database

__all__ = ["Revision", "alembic_include_name", "alembic_include_object", "check", "current", "downgrade", "history",
           "require_buffer", "upgrade"]

#: Every table pbuffer makes starts with this (backends/versioning.py: TABLE_PREFIX); kept here too so the alembic
#: hooks below can be imported without importing alembic or SQLAlchemy.
_TABLE_PREFIX = "pbuffer_"


def alembic_include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """alembic's ``include_name`` hook for an application that shares its database with a buffer.

    Pass it to ``context.configure(include_name=pbuffer.alembic_include_name, ...)`` in the application's
    ``env.py``: autogenerate then leaves pbuffer's tables (every name starting ``pbuffer_``, the version table
    included) alone instead of generating ``op.drop_table`` for them. Returns ``False`` for those, ``True`` for
    anything else.
    """
    return not (type_ == "table" and bool(name) and str(name).startswith(_TABLE_PREFIX))


def alembic_include_object(object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """alembic's ``include_object`` hook, for an ``env.py`` that already uses that hook instead of ``include_name``.

    Leaves out pbuffer's tables and everything on them (columns, indexes, constraints).
    """
    table = getattr(object_, "table", None)  # a column, index or constraint: judged by its table
    table_name = getattr(table, "name", None) if type_ != "table" else name
    return alembic_include_name(table_name, "table", {}) if table_name is not None else True


@dataclass(frozen=True)
class Revision:
    """One schema revision this pbuffer knows."""

    id: str
    description: str
    is_head: bool
    is_current: bool = False


def _database(url: str, *, must_exist: bool, integrity_check: bool = True) -> Database:
    from ..backends import sqlite_file
    from ..backends.database import Database

    # Buffer-only options (subject, pool_size...) are accepted and do not matter here.
    stripped, options = parse_options(url)
    database = Database(stripped, durability=options.get("durability"),
                        busy_timeout=options.get("busy_timeout", 30.0))
    if database.sqlite:
        if not database.path.exists():
            if must_exist:
                raise ConfigurationError(f"no buffer at {database.path}")
            sqlite_file.create_private_file(database.path)
        # Refuses foreign, planted and too-new files without writing a byte.
        sqlite_file.inspect_existing_file(database.path, options.get("integrity_check", integrity_check))
    return database


@contextmanager
def _reading(database: Database, where: str) -> Iterator[sa.Connection]:
    """A connection that only reads: read-only on a sqlite file, a plain transaction on a server database.

    pbuffer's own engine is not used for a sqlite file: its connections set pragmas (auto_vacuum, WAL), which
    write to the file, and a 0-byte file would come out a 4 KiB sqlite database.
    """
    import sqlalchemy as sa

    from ..backends.errors import map_driver_error

    if not database.sqlite:
        with database.schema_transaction(where) as conn:
            yield conn
        return
    from pathlib import Path

    uri = database.path.resolve().as_uri()
    # As sqlite_file.inspect_existing_file does: without a -wal nobody is writing, and an immutable reader creates
    # no -wal or -shm beside the file.
    immutable = "&immutable=1" if not Path(f"{database.path}-wal").exists() else ""
    engine = sa.create_engine("sqlite://", poolclass=sa.pool.NullPool, creator=lambda: sqlite3.connect(
        f"{uri}?mode=ro{immutable}", uri=True, timeout=database.busy_timeout, check_same_thread=False))
    try:
        with engine.connect() as conn:
            yield conn
    except (sa.exc.SQLAlchemyError, sqlite3.Error) as exc:
        raise map_driver_error(exc, where) from exc
    finally:
        engine.dispose()


def _revision(database: Database) -> str | None:
    with _reading(database, f"reading the revision of {database.display_url}") as conn:
        revision: str | None = database.revision_in(conn)
        return revision


def upgrade(url: str, revision: str = "head") -> str:
    """Upgrade the schema at ``url`` to ``revision`` (default: this pbuffer's newest); returns the revision the
    database is at afterwards, read back from it.

    An empty database is initialised. Safe to run while buffers have the database open, and from several
    processes at once: one migrates, the others find the work done. A revision older than the database's (or
    ``"base"``) raises :class:`~pbuffer.ConfigurationError` before anything is touched: use :func:`downgrade`.
    """
    return _migrate(url, revision, upgrade=True)


def downgrade(url: str, revision: str) -> str:
    """Downgrade the schema at ``url`` to ``revision`` (or ``"base"``: drop pbuffer's tables and messages); returns
    the revision the database is at afterwards. A revision newer than the database's raises
    :class:`~pbuffer.ConfigurationError` before anything is touched."""
    return _migrate(url, revision, upgrade=False)


def _migrate(url: str, revision: str, *, upgrade: bool) -> str:
    from ..backends import versioning

    # An unknown revision is refused before a file is created.
    goal = versioning.resolve(revision)
    if upgrade and goal is None:
        versioning.check_direction(None, None, upgrade=True)  # raises: base is never an upgrade's target
    # Upgrading may start from nothing; downgrading needs a buffer to be there.
    database = _database(url, must_exist=not upgrade)
    try:
        # Refused before any backup or migration; checked again under the schema lock (versioning).
        versioning.check_direction(_revision(database), goal, upgrade=upgrade)
        database.migrate(revision, upgrade=upgrade)
        # What the database says, not what was asked for.
        return _revision(database) or "base"
    finally:
        database.dispose()


def current(url: str) -> str | None:
    """The schema revision of the database at ``url`` (``None`` for an empty one). Reads only."""
    # No quick_check: its reader of a WAL file leaves -wal and -shm files beside it, and the revision needs none.
    database = _database(url, must_exist=True, integrity_check=False)
    try:
        return _revision(database)
    finally:
        database.dispose()


def history(url: str | None = None) -> list[Revision]:
    """Every revision this pbuffer knows, oldest first; with ``url``, the database's own is marked current."""
    from ..backends import versioning

    at = current(url) if url is not None else None
    head = versioning.head_revision()
    return [Revision(rev, versioning.describe(rev), rev == head, rev == at) for rev in versioning.known_revisions()]


def check(url: str) -> list[str]:
    """Compare the database at ``url`` with this pbuffer's model; returns the differences (``[]``: they agree).

    A database at an older revision gets a first line saying so, then its differences from the newest model: after
    an interrupted MariaDB upgrade they show what was applied and what was not (run the upgrade again: it skips
    what is already there). Reads only.
    """
    from ..backends import versioning

    database = _database(url, must_exist=True, integrity_check=False)
    head = versioning.head_revision()
    try:
        with _reading(database, f"checking {database.display_url}") as conn:
            revision = database.revision_in(conn)
            if revision is None:
                return [f"the database is at revision base, not {head}: it holds no buffer"]
            differences = [str(difference) for difference in versioning.model_differences(conn)]
            if revision != head:
                return [f"the database is at revision {revision}, not {head}: upgrade it with "
                        f"{versioning.upgrade_advice(database.display_url)}; differences from {head}'s model:",
                        *differences]
            return differences
    finally:
        database.dispose()


def require_buffer(url: str, *, upgradable: bool = False, where: str | None = None) -> None:
    """Refuse, reading only, a URL that holds no buffer: a missing file, a 0-byte file, an empty database (or one
    downgraded to base) raise :class:`~pbuffer.ConfigurationError` "no buffer at ...".

    Unless ``upgradable``, a buffer at an older schema revision raises :class:`~pbuffer.SchemaTooOldError` saying
    how to upgrade it (``where`` names the command that refused, for the message). Foreign, damaged and too-new
    databases raise as :func:`pbuffer.open` would. Schemes other than the SQL ones are not checked.
    """
    from ..backends import versioning
    from ..registry import SQL_SCHEMES, scheme_of

    if scheme_of(url) not in SQL_SCHEMES:
        return
    # quick_check is left to the open that follows (or to db verify, which runs the full integrity_check).
    database = _database(url, must_exist=True, integrity_check=False)
    try:
        if database.sqlite:
            from ..backends import sqlite_file

            if sqlite_file.inspect_existing_file(database.path, integrity_check=False):
                raise ConfigurationError(f"no buffer at {database.path}")
        revision = _revision(database)
        if revision is None:
            raise ConfigurationError(f"no buffer at {database.path if database.sqlite else database.display_url}")
        head = versioning.head_revision()
        if revision != head and not upgradable:
            raise SchemaTooOldError(versioning.too_old(database.display_url, revision, head) +
                                    (f"; {where} never upgrades" if where else "") + "; nothing was changed")
    finally:
        database.dispose()
