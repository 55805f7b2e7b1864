"""Finding damage in a buffer and moving a damaged sqlite file aside: ``pbuffer db verify`` and ``db quarantine``.

The recovery procedure (README, "Damaged files"): stop the producers and the relay, run :func:`verify`; damaged
messages alone can be dead-lettered or deleted by id, while a file sqlite itself reports damaged is moved aside with
:func:`quarantine`, so a fresh buffer starts at the old path and the old file stays available for salvage.

Messages are read through the public :class:`~pbuffer.Buffer` API (``get_all`` paging and ``dead_letters``), so
what is checked is exactly what a relay would be given, on every backend and whatever columns later schema revisions
add.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from ..buffer import Buffer
from ..errors import (
    BackendError,
    ConfigurationError,
    CorruptDatabaseError,
    NotABufferDatabaseError,
    PBufferError,
    ValidationError,
)
from ..registry import display_url, open_buffer, parse_options
from . import require_buffer

__all__ = ["VerifyReport", "quarantine", "sqlite_path", "verify"]

#: Byte of the -shm file every sqlite connection to a WAL database holds a shared lock on for as long as it is
#: open ("DMS", os_unix.c: UNIX_SHM_BASE + SQLITE_SHM_NLOCK = (22 + 8) * 4 + 8). Whoever can lock it exclusively
#: knows no other process has the database open.
_SHM_DMS = 128
#: The files of one sqlite database, in the order quarantine moves them (see :func:`quarantine`).
_SUFFIXES = ("-wal", "-shm", "")


@dataclass
class VerifyReport:
    """What :func:`verify` found. ``ok`` is true only when nothing at all is wrong."""

    url: str
    #: ``PRAGMA integrity_check`` output: ``["ok"]`` for a sound sqlite file; empty for other backends.
    integrity: list[str] = field(default_factory=list)
    #: Pending messages read with an intact checksum.
    pending: int = 0
    #: Dead letters read with an intact checksum.
    dead: int = 0
    #: Ids of messages whose stored bytes fail their checksum (pending or dead).
    damaged: list[str] = field(default_factory=list)
    #: Anything else: a file that cannot be opened, rows that cannot be read, parts that could not be checked.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.problems and self.integrity in ([], ["ok"])

    def as_dict(self) -> dict[str, Any]:
        return {"url": self.url, "ok": self.ok, "integrity_check": self.integrity, "pending": self.pending,
                "dead": self.dead, "damaged": self.damaged, "problems": self.problems}


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for any other backend), without touching it."""
    stripped = parse_options(url)[0]  # its own ConfigurationError names a bad option
    try:
        parsed = make_url(stripped)
    except (ArgumentError, ValueError) as exc:
        raise ConfigurationError(f"not a buffer URL: {display_url(url)!r}") from exc
    if parsed.get_backend_name() != "sqlite":
        return None
    from ..backends.database import sqlite_path as path_of  # the one place a sqlite URL becomes a file path

    path: Path = path_of(parsed)
    return path


def verify(url: str, *, page: int = 1000) -> VerifyReport:
    """Check the buffer at ``url`` for damage, reading everything and changing nothing that holds messages.

    sqlite files first get ``PRAGMA integrity_check`` (the full check, which also compares every index with its
    table: stronger and slower than the ``quick_check`` run at open). Then every pending message and dead letter is
    read through the Buffer API, which verifies each one's checksum; the ids of those that fail are collected and
    the reading goes on past them. The buffer is opened without the open-time check (so a damaged file can still
    be read) and without upgrading its schema. Run it with the producers and the relay stopped: messages removed
    while it reads make it report a changed buffer.

    Limit: the Buffer API lists dead letters in one piece, so after the first damaged dead letter the rest are not
    checked (reported in ``problems``).
    """
    path = sqlite_path(url)
    report = VerifyReport(url=display_url(url))
    options: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigurationError(f"no buffer at {path}")
        from ..backends.sqlite_file import check_access

        # A permission problem is no damage: raised as such (StoragePermissionError), not reported as NOT OK.
        check_access(path, path.with_name(path.name + ".lock"))
        try:
            report.integrity = _integrity_check(path)
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                report.problems.append(f"{path} is not a sqlite database: {exc}")
                return report  # nothing more can be read from it
            report.integrity = [f"integrity_check could not run: {exc}"]  # damaged too badly for the check
        # Verifying must not write to the file it looks at (an upgrade would), and must get past a failed check.
        options = {"integrity_check": False, "auto_upgrade": False}
    # Looking never creates: a 0-byte file or an empty server database is no buffer, and opening one would
    # initialise it. Damaged and foreign databases go on, to be reported.
    with contextlib.suppress(CorruptDatabaseError, NotABufferDatabaseError):
        require_buffer(url, upgradable=True)
    given = parse_options(url)[1]
    try:
        buf = open_buffer(url, **{k: v for k, v in options.items() if k not in given})
    except PBufferError as exc:
        report.problems.append(f"cannot open the buffer: {exc}")
        return report
    try:
        expected = len(buf)
        _check_pending(buf, report, page, expected)
        _check_dead(buf, report)
    except PBufferError as exc:  # a failure that is no checksum: the storage itself cannot be read
        report.problems.append(f"reading stopped: {exc}")
    finally:
        buf.close()
    return report


def _integrity_check(path: Path) -> list[str]:
    # Read-only: a damaged file must not be written to while it is being examined.
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def _check_pending(buf: Buffer, report: VerifyReport, page: int, expected: int) -> None:
    """Read every pending message, oldest first, stepping over damaged ones.

    A damaged message makes the whole page that holds it raise, naming only that message. The messages before it in
    the page are then read one at a time until the read fails on it, and reading resumes after it (``after`` looks
    the message up by its stored id, which the checksum error names).
    """
    after: str | None = None
    size = page
    while True:
        try:
            chunk = buf.get_all(size, after=after)
        except CorruptDatabaseError as exc:
            if exc.message_id is None:
                raise
            if size > 1:
                size = 1  # find the intact messages in front of the damaged one
                continue
            report.damaged.append(exc.message_id)
            after, size = exc.message_id, page
            try:
                buf.get_all(1, after=after)
            except ValidationError:  # the damage hit the id itself: nothing can be looked up after it
                report.problems.append(f"cannot read past damaged message {exc.message_id}: its id is unreadable")
                return
            except CorruptDatabaseError:
                pass  # the next one is damaged too: the loop records it
            continue
        if not chunk:
            return
        report.pending += len(chunk)
        if report.pending + len(report.damaged) > expected:
            # `after` was not found (the buffer changed while we read): reading restarted from the oldest.
            report.problems.append("the buffer changed while it was being verified; stop the relay and producers "
                                   "and run it again")
            return
        after = chunk[-1].id


def _check_dead(buf: Buffer, report: VerifyReport) -> None:
    try:
        report.dead = len(buf.dead_letters())
        return
    except CorruptDatabaseError as exc:
        if exc.message_id is None:
            raise
        damaged = exc.message_id
    # Count the readable dead letters in front of the damaged one: the largest limit that reads without error.
    low, high = 0, 1
    while True:
        try:
            buf.dead_letters(high)
        except CorruptDatabaseError:
            break
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        try:
            buf.dead_letters(middle)
            low = middle
        except CorruptDatabaseError:
            high = middle
    report.dead = low
    report.damaged.append(damaged)
    report.problems.append(f"dead letters after damaged dead letter {damaged} were not checked (the Buffer API lists "
                           "dead letters in one piece)")


def quarantine(url: str, *, now: datetime | None = None) -> list[tuple[Path, Path]]:
    """Move a damaged sqlite buffer aside, so a fresh buffer can be opened at its path; never deletes anything.

    The database file, its ``-wal`` and its ``-shm`` are renamed to ``<name>.quarantined-<UTC time>`` (and that name
    with ``-wal``/``-shm``), beside the original, keeping their mode (0600): sqlite opens the quarantined file with
    its own WAL, so nothing committed is left behind. The ``-wal`` goes first: a crash half-way can leave the old
    main file without its WAL (still readable, nothing lost) but never an old WAL beside a new main file, which
    sqlite would replay into it. Returns the ``(old, new)`` paths moved.

    Refused (:class:`~pbuffer.BackendError`) while another process has the database open, detected by the lock
    every sqlite connection holds on the ``-shm`` file, and held during the renames so that nobody opens the file
    half-moved. Must not run in a process that itself has the buffer open: POSIX locks belong to the process, so
    that process's own connections are invisible to the check and would lose their locks.
    """
    path = sqlite_path(url)
    if path is None:
        raise ConfigurationError("quarantine moves sqlite files only; restore a server database from its backups")
    if not path.is_file():
        raise ConfigurationError(f"no buffer at {path}")
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    base = f"{path.name}.quarantined-{stamp}"
    for attempt in range(2, 1000):
        targets = [path.with_name(base + suffix) for suffix in _SUFFIXES]
        if not any(os.path.lexists(target) for target in targets):
            break
        base = f"{path.name}.quarantined-{stamp}-{attempt}"  # quarantined twice within a second
    else:  # pragma: no cover - a thousand quarantines in one second
        raise BackendError(f"no free quarantine name beside {path}")
    moved: list[tuple[Path, Path]] = []
    shm_fd = _exclude_other_connections(path)
    try:
        for suffix, target in zip(_SUFFIXES, targets, strict=True):
            source = path.with_name(path.name + suffix)
            if not source.exists():
                continue
            os.rename(source, target)
            moved.append((source, target))
        # The renames are durable once the directory is synced.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if shm_fd is not None:
            os.close(shm_fd)  # releases the lock
    return moved


def _exclude_other_connections(path: Path) -> int | None:
    """Lock the -shm file's DMS byte exclusively, or raise if another process has the database open.

    Returns the descriptor holding the lock (closing it releases the lock), or ``None`` when there is no -shm file:
    no connection to a WAL database exists without one.
    """
    try:
        fd = os.open(f"{path}-shm", os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise BackendError(f"{path} is open in another process; stop it (producers, relay) before moving the "
                               "file aside") from exc
        raise
    return fd
