"""What is special about sqlite files: creating them privately, refusing foreign or newer files without
writing a byte, and the pragmas every connection gets."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

from pbuffer.errors import CorruptDatabaseError, NotABufferDatabaseError, SchemaTooNewError

from . import versioning
from .schema import VERSION_TABLE

__all__ = ["DURABILITY_SYNCHRONOUS", "WriteLock", "configure_connection", "create_private_file",
           "inspect_existing_file", "wal_reset_bug"]

#: ``durability`` option -> ``PRAGMA synchronous`` in WAL mode (sqlite.org/pragma.html#pragma_synchronous).
DURABILITY_SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (and missing parent directories with 0700) if it does not exist.

    sqlite's -wal and -shm files copy the main file's permissions, so this makes all of them private.
    """
    if path.exists():
        return
    missing = [parent for parent in reversed(path.parents) if not parent.exists()]
    for directory in missing:
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:  # another process won the race; it made the file the same way
        return
    os.close(fd)


def inspect_existing_file(path: Path, integrity_check: bool) -> bool:
    """Decide, reading only, whether an existing file may be opened as a buffer.

    Returns ``True`` when the file is empty (to be initialised). Raises, leaving the file byte-for-byte unchanged,
    when it is not sqlite or not pbuffer's, holds schema objects its revision did not create (a planted trigger
    or view could act on our writes), is at a revision this code does not know, or fails ``quick_check``.
    An older known revision passes: the caller upgrades it.
    """
    uri = path.resolve().as_uri()
    # A reader of a WAL database creates -wal and -shm files. While there is no -wal file, every change is in
    # the main file and nobody is writing, so read it as immutable: a file we refuse gets no new files beside it.
    immutable = not Path(f"{path}-wal").exists()
    try:
        if path.stat().st_size == 0:
            return True
        conn = sqlite3.connect(f"{uri}?mode=ro{'&immutable=1' if immutable else ''}", uri=True, timeout=30)
    except (OSError, sqlite3.Error) as exc:
        raise NotABufferDatabaseError(f"{path}: cannot be opened as a sqlite database: {exc}") from exc
    try:
        objects = {(kind, name) for kind, name in conn.execute("SELECT type, name FROM sqlite_master")}
        if not objects:
            return True
        if ("table", VERSION_TABLE) not in objects:
            raise NotABufferDatabaseError(
                f"{path} is a sqlite database but not a pbuffer buffer (it has no {VERSION_TABLE} table); "
                "it was left unchanged")
        revision = _revision(conn)
        if revision is None:  # downgraded to base: only the (empty) version table is left
            expected = frozenset({("table", VERSION_TABLE), ("index", f"sqlite_autoindex_{VERSION_TABLE}_1")})
        elif revision not in versioning.known_revisions():
            raise SchemaTooNewError(
                f"{path} is at schema revision {revision!r}, which this pbuffer does not know: it was written by a "
                "newer pbuffer. Upgrade pbuffer to open it; the file was left unchanged")
        else:
            expected = versioning.sqlite_objects(revision)
        unexpected = objects - expected
        if unexpected:
            listed = ", ".join(f"{kind} {name!r}" for kind, name in sorted(unexpected))
            raise NotABufferDatabaseError(
                f"{path} holds schema objects pbuffer did not create ({listed}); refusing to open it")
        if integrity_check:
            # Not as immutable: another process may start writing now, and quick_check must see its locks.
            conn.close()
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30)
            problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise CorruptDatabaseError(f"{path} failed sqlite's quick_check: {'; '.join(problems[:5])}")
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text:
            raise NotABufferDatabaseError(f"{path} is not a sqlite database; it was left unchanged") from exc
        raise CorruptDatabaseError(f"{path} is damaged: {text}") from exc
    finally:
        conn.close()
    return False


def _revision(conn: sqlite3.Connection) -> str | None:
    rows = conn.execute(f"SELECT version_num FROM {VERSION_TABLE}").fetchall()
    return rows[0][0] if len(rows) == 1 else None


_AUTO_VACUUM_INCREMENTAL = 2


def configure_connection(dbapi_connection: Any, synchronous: str, busy_timeout_ms: int) -> None:
    """Pragmas for every new connection, and pysqlite's implicit BEGIN switched off (pbuffer issues its own)."""
    dbapi_connection.isolation_level = None
    # Must precede the first table: auto_vacuum cannot be switched on later. Set only where it is not on yet:
    # setting it writes the file header even when nothing changes, which on a full disk fails every new
    # connection, and in one-writer mode would be a write outside the lock.
    if dbapi_connection.execute("PRAGMA auto_vacuum").fetchone()[0] != _AUTO_VACUUM_INCREMENTAL:
        dbapi_connection.execute("PRAGMA auto_vacuum=INCREMENTAL")
    for pragma in (
        "journal_mode=WAL",
        f"synchronous={synchronous}",
        f"busy_timeout={busy_timeout_ms}",
        # A file from elsewhere must not run code through views/triggers calling functions.
        "trusted_schema=OFF",
        "foreign_keys=OFF",
        # When the WAL restarts after a checkpoint it is cut back to 16 MiB, so a drained backlog does not leave
        # a large -wal behind.
        "journal_size_limit=16777216",
    ):
        dbapi_connection.execute(f"PRAGMA {pragma}")


def wal_reset_bug(version: tuple[int, ...] = sqlite3.sqlite_version_info) -> bool:
    """Whether this sqlite library has the WAL-reset bug (sqlite.org/wal.html, "WAL-reset"): 3.7.0 up to 3.51.2
    can corrupt a database when several connections write and checkpoint at once; fixed in 3.51.3 and
    backported to 3.50.7 and 3.44.6."""
    if version >= (3, 51, 3) or version < (3, 7, 0):
        return False
    return not ((3, 50, 7) <= version < (3, 51) or (3, 44, 6) <= version < (3, 45))


class WriteLock:
    """One writer at a time across processes and threads: an flock on ``<database>.lock`` plus a thread lock.

    Used where the sqlite library has the WAL-reset bug. Every write transaction (and so every automatic
    checkpoint, which runs at a commit) and every connection close (which may checkpoint) happens under it, so
    no checkpoint ever overlaps another connection's write. flock belongs to the open file, not the process,
    so two buffers on one database in one process exclude each other too; a buffer must not be shared across a
    fork.
    """

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        create_private_file(self.path)
        # The lock file is never the database: opening and closing it cannot drop sqlite's own locks.
        self._fd = os.open(self.path, os.O_RDWR)
        self._thread_lock = threading.Lock()

    def __enter__(self) -> WriteLock:
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        os.close(self._fd)
