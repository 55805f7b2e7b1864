"""The buffer schema's history and its moves, for SQL backends: ``pbuffer.upgrade``, ``downgrade``, ``current``,
``history``, ``check`` (also ``pbuffer db ...`` on the command line).

Each takes a database URL as :func:`pbuffer.open` does. Upgrades and downgrades hold the database's schema lock,
run inside one transaction where the database allows it (sqlite, PostgreSQL; not MariaDB, whose DDL commits as it
goes), and on sqlite take a backup with sqlite's backup API first, kept beside the file until the move committed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .registry import parse_options

if TYPE_CHECKING:
    # mypy cannot follow the installed mapping of backends/ to pbuffer.backends: Database is Any to it.
    from .backends.database import Database

__all__ = ["Revision", "check", "current", "downgrade", "history", "upgrade"]


@dataclass(frozen=True)
class Revision:
    """One schema revision this pbuffer knows."""

    id: str
    description: str
    is_head: bool
    is_current: bool = False


def _database(url: str, *, must_exist: bool) -> Database:
    from .backends import sqlite_file
    from .backends.database import Database

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
        sqlite_file.inspect_existing_file(database.path, options.get("integrity_check", True))
    return database


def upgrade(url: str, revision: str = "head") -> str:
    """Upgrade the schema at ``url`` to ``revision`` (default: this pbuffer's newest); returns the revision reached.

    An empty database is initialised. Safe to run while buffers have the database open, and from several
    processes at once: one migrates, the others find the work done.
    """
    return _migrate(url, revision, upgrade=True)


def downgrade(url: str, revision: str) -> str:
    """Downgrade the schema at ``url`` to ``revision`` (or ``"base"``: drop pbuffer's tables and messages)."""
    return _migrate(url, revision, upgrade=False)


def _migrate(url: str, revision: str, *, upgrade: bool) -> str:
    # Upgrading may start from nothing; downgrading needs a buffer to be there.
    database = _database(url, must_exist=not upgrade)
    try:
        reached: str = database.migrate(revision, upgrade=upgrade)
        return reached
    finally:
        database.dispose()


def current(url: str) -> str | None:
    """The schema revision of the database at ``url`` (``None`` for an empty one)."""
    database = _database(url, must_exist=True)
    try:
        with database.schema_transaction(f"reading the revision of {database.display_url}") as conn:
            revision: str | None = database.revision_in(conn)
            return revision
    finally:
        database.dispose()


def history(url: str | None = None) -> list[Revision]:
    """Every revision this pbuffer knows, oldest first; with ``url``, the database's own is marked current."""
    from .backends import versioning

    at = current(url) if url is not None else None
    head = versioning.head_revision()
    return [Revision(rev, versioning.describe(rev), rev == head, rev == at) for rev in versioning.known_revisions()]


def check(url: str) -> list[str]:
    """Compare the database at ``url`` with this pbuffer's model; returns the differences (``[]``: they agree)."""
    from .backends import versioning

    database = _database(url, must_exist=True)
    try:
        with database.schema_transaction(f"checking {database.display_url}") as conn:
            revision = database.revision_in(conn)
            if revision != versioning.head_revision():
                return [f"the database is at revision {revision or 'base'}, not {versioning.head_revision()}: "
                        "upgrade it first"]
            differences: list[Any] = versioning.model_differences(conn)
            return [str(difference) for difference in differences]
    finally:
        database.dispose()
