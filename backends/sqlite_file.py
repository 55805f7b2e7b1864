"""What is special about sqlite files: creating them privately, refusing foreign or newer files without
writing a byte, and the pragmas every connection gets."""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

from pbuffer.errors import (
    BackendError,
    ConfigurationError,
    CorruptDatabaseError,
    NotABufferDatabaseError,
    SchemaTooNewError,
    StoragePermissionError,
)

from . import versioning
from .tables import VERSION_TABLE

__all__ = ["DURABILITY_SYNCHRONOUS", "WriteLock", "check_access", "configure_connection", "create_private_file",
           "inspect_existing_file", "wal_reset_bug"]

#: ``durability`` option -> ``PRAGMA synchronous`` in WAL mode (sqlite.org/pragma.html#pragma_synchronous).
DURABILITY_SYNCHRONOUS = {"process": "NORMAL", "power": "FULL"}


def create_private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 (and missing parent directories with 0700) if it does not exist.

    sqlite's -wal and -shm files copy the main file's permissions, so this makes all of them private.
    Raises :class:`~pbuffer.StoragePermissionError` (or another :class:`~pbuffer.BackendError`), never a raw
    ``OSError``.
    """
    try:
        _create_private_file(path)
    except PermissionError as exc:
        raise StoragePermissionError(f"permission denied: cannot create {path} ({exc.strerror}); fix the "
                                     "permissions of its directory or choose another path") from exc
    except OSError as exc:
        if exc.errno == errno.EROFS:
            raise StoragePermissionError(f"cannot create {path}: its filesystem is mounted read-only") from exc
        raise BackendError(f"cannot create {path}: {exc.strerror or exc}") from exc


def _create_private_file(path: Path) -> None:
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
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _NOT_DAMAGE:  # the primary code of the extended one
            # sqlite could not open or lock a file beside it (permissions, a vanished directory): nothing says the
            # file is damaged, and calling it damaged would send the reader to quarantine a healthy buffer.
            raise BackendError(f"{path}: sqlite could not open it to check it ({text}); this is not damage: check "
                               "the permissions of the file, its directory and its -wal/-shm files") from exc
        raise CorruptDatabaseError(f"{path} is damaged: {text}") from exc
    finally:
        conn.close()
    return False


# sqlite result codes that say a file could not be opened or written, not that it is damaged: SQLITE_PERM,
# SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_AUTH (sqlite.org/rescode.html; Python 3.11+ names them, and only
# Python 3.11+ gives an error its code).
_NOT_DAMAGE = {3, 8, 14, 23}


def check_access(path: Path, lock_file: Path | None = None) -> None:
    """Before sqlite touches ``path``: refuse, with a message naming the path and the permission, what sqlite
    would misreport (as damage, "not a database" or "disk I/O error").

    A sqlite buffer in WAL mode needs to read and write its file, its ``-wal`` and ``-shm`` files and the lock
    file when there is one, and to create files in its directory (sqlite creates and removes ``-wal`` and
    ``-shm`` there). Raises :class:`~pbuffer.ConfigurationError` when the path is a directory and
    :class:`~pbuffer.StoragePermissionError` for a permission this process lacks; changes nothing.
    """
    if path.is_dir():
        raise ConfigurationError(f"{path} is a directory; a sqlite buffer needs a file path "
                                 "(sqlite:///path/to/buffer.db)")
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent  # create_private_file makes the missing ones in here
    if not directory.is_dir():
        raise ConfigurationError(f"{directory} is not a directory, so {path} cannot be created in it")
    _need(directory, os.W_OK | os.X_OK, "write to the directory",
          f"sqlite creates {path.name}-wal and {path.name}-shm beside the buffer there")
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), *([lock_file] if lock_file else [])):
        if file.exists():
            _need(file, os.R_OK | os.W_OK, "read and write",
                  "the buffer's files are read and written by every process that opens it")


def _need(target: Path, mode: int, verb: str, why: str) -> None:
    effective = os.access in os.supports_effective_ids
    if os.access(target, mode, effective_ids=effective):
        return
    try:
        info = target.stat()
        held = f"mode {stat.S_IMODE(info.st_mode):04o}, owner uid {info.st_uid}"
    except OSError:
        held = "its mode cannot be read"
    raise StoragePermissionError(
        f"permission denied: this process (uid {os.geteuid()}) cannot {verb} {target} ({held}, or a read-only "
        f"filesystem); {why}. This is a permission problem, not damage: nothing was changed; fix the permissions "
        "or run as the buffer's owner")


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
    fork. ``database`` must be the real path (symlinks resolved): two names of one file must share one lock.

    Waiting is bounded by ``timeout`` (the buffer's busy_timeout): a holder that hangs or is stopped makes the
    others fail with a :class:`~pbuffer.BackendError` naming the lock file instead of blocking for ever.
    """

    def __init__(self, database: Path, timeout: float = 30.0) -> None:
        self.path = database.with_name(database.name + ".lock")
        self.timeout = timeout
        create_private_file(self.path)
        # The lock file is never the database: opening and closing it cannot drop sqlite's own locks.
        try:
            self._fd = os.open(self.path, os.O_RDWR)
        except PermissionError as exc:
            raise StoragePermissionError(f"permission denied: cannot open the write lock file {self.path} for "
                                         f"reading and writing ({exc.strerror}); every process that opens the "
                                         "buffer needs to; fix its permissions") from exc
        except OSError as exc:
            raise BackendError(f"cannot open the write lock file {self.path}: {exc.strerror or exc}") from exc
        # Guards the descriptor too: close() takes it, so the descriptor is never closed under a holder (whose
        # unlock would then fail after its commit) nor locked after it was closed (or reused for another file).
        # An RLock for its owner check, never taken twice by one thread (__enter__ refuses).
        self._thread_lock = threading.RLock()
        self._closed = False

    def __enter__(self) -> WriteLock:
        # Every save and pop comes here: the uncontended case takes both locks at the first try, with no clock read.
        lock = self._thread_lock
        if lock._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError(f"the write lock {self.path} is not reentrant: this thread holds it already")
        deadline = None
        try:
            if not lock.acquire(False):
                deadline = time.monotonic() + self.timeout
                if not lock.acquire(timeout=self.timeout):
                    raise BackendError(f"another thread held the write lock {self.path} past busy_timeout="
                                       f"{self.timeout} s; nothing was written")
            if self._closed:
                raise BackendError("the buffer was closed (by another thread); nothing was written")
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file(time.monotonic() + self.timeout if deadline is None else deadline)
        except BaseException:
            # Whether this thread got the lock is asked of the lock: a KeyboardInterrupt can land right after
            # acquire() returned (and left it held for good when the acquire came before this try).
            if lock._is_owned():  # type: ignore[attr-defined]
                try:
                    if not self._closed:
                        fcntl.flock(self._fd, fcntl.LOCK_UN)  # (not held: nothing happens)
                finally:
                    lock.release()
            raise
        return self

    def _lock_file(self, deadline: float) -> None:
        # flock cannot time out by itself: poll a non-blocking attempt, backing off up to a few milliseconds.
        delay = 0.0002
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(
                    f"another process held the write lock {self.path} past busy_timeout={self.timeout} s (it may be "
                    "stopped or hung); nothing was written")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, _LOCK_POLL_MAX)

    def __exit__(self, *exc_info: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def close(self) -> None:
        """Close the lock file, after any holder is done; later attempts to take the lock raise. Idempotent."""
        with self._thread_lock:
            if not self._closed:
                self._closed = True
                os.close(self._fd)


# Longest pause, in seconds, between two attempts at a write lock another process holds.
_LOCK_POLL_MAX = 0.005
