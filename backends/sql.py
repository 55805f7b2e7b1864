"""The SQLAlchemy backend: sqlite files, PostgreSQL (psycopg 3) and MariaDB/MySQL (PyMySQL).

SQLAlchemy provides the engine, the connection pool, the dialects and (through alembic) the schema; the hot paths
(save, pop, get) then run a handful of fixed statements on the pooled DBAPI connection, compiled once per dialect,
because SQLAlchemy's per-statement machinery would cost more than sqlite's own commit.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from typing import Any, NoReturn

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pbuffer.buffer import Buffer
from pbuffer.errors import (
    BackendError,
    BufferFullError,
    ConfigurationError,
    CorruptDatabaseError,
    PBufferError,
    SchemaChangedError,
)
from pbuffer.ids import from_bytes, to_bytes
from pbuffer.limits import BufferStats, ClaimStats, SubjectStats
from pbuffer.message import DeadLetter, Message, checksum, decode_headers, encode_headers, from_micros
from pbuffer.outbox import caller_connection, same_database

from . import sqlite_file, versioning
from .database import Database, sqlite_path
from .errors import is_missing_table, map_driver_error
from .schema import COUNTED, COUNTER_COLUMNS, COUNTERS, DEAD_LETTERS, MESSAGES

__all__ = ["SQLBuffer"]

_log = logging.getLogger("pbuffer.backends.sql")

#: Bytes of a MariaDB/MySQL insert statement besides its escaped payload and headers (SQL text, id, subject...).
_STATEMENT_ROOM = 64 * 1024
_COLUMNS = "id, subject, payload, headers, created_us, checksum"
_SEQ_COLUMNS = ("seq", *_COLUMNS.split(", "))
# Ids per DELETE ... IN (...): well under every backend's limit on bound parameters.
_CHUNK = 500
# LIMIT for "all" that every backend accepts (sqlite's -1 and PostgreSQL's NULL are not portable).
_NO_LIMIT = 2**62
_ID_PARAMS = [f"id{i}" for i in range(_CHUNK)]
# Space reclaiming (sqlite): look after this many removed rows; act once this many pages (4 MiB) are free;
# release this many pages per transaction.
_RECLAIM_EVERY = 5000
_RECLAIM_MIN_PAGES = 1024
_RECLAIM_STEP = 8192
_DEAD_COLUMNS = f"{_COLUMNS}, reason, attempts, failed_us"
_SEQ_PARAMS = [f"s{i}" for i in range(_CHUNK)]
_SKIP_PARAMS = [f"k{i}" for i in range(_CHUNK)]
# Counter rows per subject that server databases spread concurrent writers over (sqlite has one writer: shard 0).
_SHARDS = 16
# Positions in a subject's counter changes (the order of COUNTER_COLUMNS).
_DROPPED, _EXPIRED = 4, 5
_KIND = {"dropped": _DROPPED, "expired": _EXPIRED}
Changes = dict[str, list[int]]
# sqlite counts new messages lazily (revision 0003): a writer folds the uncounted tail into the counters once it may
# hold this many rows (fewer when limits are set: each limited save reads the tail), so stats() adds up at most
# about that many rows per writing process.
_FOLD_EVERY = 1024
_FOLD_EVERY_LIMITED = 64
# Most idle connections a buffer may keep: far above any useful thread count; more is a typo.
_MAX_POOL_SIZE = 10_000
# Outbox saves on server databases count into a counters row of their own: a shard drawn from this range, which no
# other writer uses, so the row locked until the caller commits is nobody else's (see _insert_in). Relays' deletes
# fold committed ones back into the shared shards, at most every _FOLD_OUTBOX_EVERY seconds per process.
_OUTBOX_SHARDS = (_SHARDS, 2**31 - 1)
_FOLD_OUTBOX_EVERY = 1.0
_FOLD_OUTBOX_ROWS = 1000
# PostgreSQL: the channel every save NOTIFYs at its commit and buffers LISTEN on (wait_for_messages across
# processes); seconds between the listening thread's looks at whether the buffer was closed.
_CHANNEL = "pbuffer"
_LISTEN_TICK = 0.5


class SQLBuffer(Buffer):
    """A buffer in a SQL database through SQLAlchemy.

    ``url`` is a SQLAlchemy URL: ``sqlite:///relative.db``, ``sqlite:////absolute/path.db``,
    ``postgresql+psycopg://user@host/db``, ``mysql+pymysql://user@host/db``.

    Options:
        subject, max_messages, max_bytes, overflow, ttl, block_timeout: see :class:`pbuffer.Buffer`.
        durability: sqlite only. ``"process"`` (default): a saved message survives a crash or kill -9 of the
            process (WAL, ``synchronous=NORMAL``). ``"power"``: it also survives power loss or an OS crash
            (``synchronous=FULL``, an fsync per commit). Server databases keep what their commit keeps.
        busy_timeout: seconds (0 to 2147483) to wait for a lock held by another connection or process before
            failing with :class:`~pbuffer.BackendError`; bounds the wait for the one-writer lock file too.
        pool_size: idle connections kept open for reuse (about the number of threads using the buffer at once;
            1 to 10000).
        integrity_check: sqlite only; run ``PRAGMA quick_check`` when an existing file is opened.
        auto_upgrade: upgrade an older schema at open. Default: yes for sqlite (after a backup), no for server
            databases, which raise :class:`~pbuffer.SchemaTooOldError` naming the command to run.
        serialize_writes: sqlite only; one writer at a time across processes (a lock file beside the database),
            so checkpoints never overlap another connection's write. Default: on when the sqlite library has the
            WAL-reset bug (3.7.0-3.51.2 except 3.50.7+ and 3.44.6+), off otherwise.

    A sqlite path is used with its symlinks resolved (the lock file and backups sit beside the real file). A
    permission problem with the file, its directory or the files beside it raises
    :class:`~pbuffer.StoragePermissionError` naming the path and the permission.
    """

    schemes = ("sqlite", "postgresql", "mysql", "mariadb")

    def __init__(self, url: str | URL, *, durability: str | None = None, busy_timeout: float = 30.0,
                 pool_size: int = 8, integrity_check: bool = True, auto_upgrade: bool | None = None,
                 serialize_writes: bool | None = None, **options: Any) -> None:
        super().__init__(**options)
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or not 1 <= pool_size <= _MAX_POOL_SIZE:
            raise ConfigurationError(f"pool_size must be an int from 1 to {_MAX_POOL_SIZE}, not {pool_size!r}")
        database = Database(url, durability=durability, busy_timeout=busy_timeout)
        self.url, self.durability, self.busy_timeout = database.url, database.durability, database.busy_timeout
        self._sqlite = database.sqlite
        self.serialize_writes = bool(database.sqlite and (
            sqlite_file.wal_reset_bug() if serialize_writes is None else serialize_writes))
        self._write_lock: AbstractContextManager[object] = nullcontext()
        if database.sqlite:
            self.path = database.path
            lock_file = self.path.with_name(self.path.name + ".lock") if self.serialize_writes else None
            # A permission problem gets its own error here; sqlite would report it as damage or worse.
            sqlite_file.check_access(self.path, lock_file)
            sqlite_file.create_private_file(self.path)
            sqlite_file.inspect_existing_file(self.path, integrity_check)
            if self.serialize_writes:
                self._write_lock = database.write_lock = sqlite_file.WriteLock(self.path, database.busy_timeout)
        try:
            # A sqlite file belongs to this program and is upgraded (after a backup); a server database may be
            # shared with older clients, so upgrading it is an explicit decision.
            database.prepare(auto_upgrade=database.sqlite if auto_upgrade is None else auto_upgrade)
        except BaseException:
            database.dispose()
            if isinstance(self._write_lock, sqlite_file.WriteLock):
                self._write_lock.close()
            raise
        self._database = database
        self._engine = database.engine
        self._sql = _Statements(self._engine, self.subject)
        # sqlite: saves leave their rows uncounted (the tail above pbuffer_counted's mark); see _maybe_fold.
        self._lazy = self._sqlite
        self._mark: int | None = None  # the mark as this process last saw it
        self._connections = _Connections(self._engine, keep=pool_size)
        self._dbapi_error: type[Exception] = self._engine.dialect.loaded_dbapi.Error
        self._removed_since_check = 0
        self._outbox_folded_at = 0.0
        # Callers' databases already found to be this one (or not: why), by their URL.
        self._same_database: dict[str, str | None] = {}
        # PostgreSQL with psycopg 3: saves NOTIFY at commit; a listener added to this buffer starts a thread
        # that LISTENs, so saves of other processes wake this one's relay too.
        dialect = self._engine.dialect
        self._listens = dialect.name == "postgresql" and dialect.driver == "psycopg"
        # The NOTIFY names this buffer object, whose own saves already woke its listeners in-process.
        self._token = uuid.uuid4().hex
        self._notify_sql = f"NOTIFY {_CHANNEL}, '{self._token}'" if dialect.name == "postgresql" else ""
        self._listen_lock = threading.Lock()
        self._listen_thread: threading.Thread | None = None
        self._listen_stop = threading.Event()
        if dialect.name in ("mysql", "mariadb"):
            self._limit_to_packet_size()

    def _limit_to_packet_size(self) -> None:
        """MariaDB/MySQL take one statement of at most ``max_allowed_packet`` bytes, and the driver sends a payload
        escaped inside the statement's text, up to twice its size: a larger one failed at save with "packet bigger
        than max_allowed_packet" or "server has gone away". Refuse it at save, naming the setting, instead."""
        with self._cursor("open", write=False) as cursor:
            cursor.execute("SELECT @@max_allowed_packet")
            packet = int(cursor.fetchone()[0])
        self._max_message_bytes = max((packet - _STATEMENT_ROOM) // 2, 0)
        self._max_message_reason = (
            f"this MariaDB/MySQL server takes in one statement: max_allowed_packet is {packet:,} bytes and a payload "
            f"may need twice its size there, so messages up to {self._max_message_bytes:,} bytes fit (raise "
            "max_allowed_packet on the server, then open the buffer again, or send smaller messages)")

    @classmethod
    def from_url(cls, url: str, **options: Any) -> SQLBuffer:
        return cls(url, **options)

    def __repr__(self) -> str:
        return f"SQLBuffer({self._database.display_url!r}, subject={self.subject!r})"

    # ------------------------------------------------------------------------------------------ transactions

    @contextmanager
    def _cursor(self, where: str, write: bool) -> Iterator[Any]:
        """A DBAPI cursor inside one transaction, committed on success and rolled back on any error.

        sqlite: writes start with BEGIN IMMEDIATE (take the write lock first, so the busy timeout applies);
        a lone read runs in sqlite's autocommit mode. Server databases open transactions implicitly.
        """
        # A writer takes its connection under the write lock and gives it back there: a connection made for it
        # runs pragmas that may write, and one closed on the way back may checkpoint.
        with self._write_lock if write else nullcontext():
            conn = self._connections.take(where)
            try:
                cursor = conn.cursor()
                if write and self._sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                yield cursor
                conn.commit()
            except BaseException as exc:
                self._failed(conn, exc, where)
            self._connections.give_back(conn)

    def _failed(self, conn: Any, exc: BaseException, where: str) -> NoReturn:
        """After a failed transaction: drop the connection and raise the error, mapped if the driver's.

        A failed transaction may leave the connection in any state (or dead), so it is rolled back and thrown
        away; SQLITE_FULL in particular may or may not have rolled back by itself (lang_transaction.html).
        """
        self._connections.discard(conn)
        if isinstance(exc, self._dbapi_error):
            if is_missing_table(exc):
                raise self._schema_changed(where) from exc
            raise map_driver_error(exc, where) from exc
        raise exc

    def _schema_changed(self, where: str) -> PBufferError:
        """The error for a table of ours that is gone: another process migrated the database under this buffer
        (revision 0003 renames the writers' tables for exactly this), or something else dropped it."""
        try:
            with self._database.engine.connect() as conn:
                revision = versioning.current_revision(conn)
        except (sa.exc.SQLAlchemyError, self._dbapi_error) as exc:
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

    # --------------------------------------------------------------------------------------------- primitives

    def _insert(self, messages: list[Message]) -> None:
        # The hot path of save(): the same steps as _cursor, spelled out to spare a generator per message.
        # sqlite binds positional parameters faster than named ones.
        rows = [_row_values(message) for message in messages] if self._sqlite else [_row(m) for m in messages]
        with self._write_lock:
            conn = self._connections.take("save")
            try:
                cursor = conn.cursor()
                if self._sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                if self.limits.bounded:
                    self._make_room(cursor, messages)
                if len(rows) == 1:
                    cursor.execute(self._sql.insert_row, rows[0])
                    if self._lazy:
                        self._maybe_fold(cursor, cursor.lastrowid)
                    else:
                        message = messages[0]
                        self._bump(cursor, {message.subject: [1, len(message.payload), 0, 0, 0, 0]})
                else:
                    cursor.executemany(self._sql.insert_row, rows)
                    if self._lazy:
                        self._maybe_fold(cursor, None)
                    else:
                        self._bump(cursor, _tally(((m.subject, len(m.payload)) for m in messages), pending=1))
                if self._notify_sql:
                    cursor.execute(self._notify_sql)
                conn.commit()
            except BaseException as exc:
                self._failed(conn, exc, "save")
            self._connections.give_back(conn)

    def _make_room(self, cursor: Any, messages: list[Message], outbox: bool = False) -> None:
        """Inside a save's transaction: apply the size limits (raise, or drop the oldest pending messages).

        ``outbox``: in a caller's transaction, which holds whatever it locks until the caller commits. On a server
        database it then takes no turn on the limits lock (every limited save would wait for the caller) and drops
        only messages no relay holds a claim on (the relay's delete would wait for the caller).
        """
        if not self._sqlite and not outbox:
            # Writers that enforce limits take turns on a server database (sqlite's BEGIN IMMEDIATE already does),
            # so two saves cannot both see the last free place.
            cursor.execute(self._sql.limit_lock)
            cursor.fetchall()
        cursor.execute(self._sql.totals, self._sql.scope)
        totals = cursor.fetchone()
        unclaimed = outbox and not self._sqlite
        oldest_sql = self._sql.outbox_oldest if unclaimed else self._sql.oldest_sizes

        def oldest(count: int) -> list[tuple[tuple[int, str, int], int]]:
            params = {**self._sql.scope, "limit": count}
            if unclaimed:
                params["now"] = time.time_ns() // 1000
            cursor.execute(oldest_sql, params)
            return [((int(seq), subject, int(size)), int(size)) for seq, subject, size in cursor.fetchall()]

        victims = self.limits.make_room(int(totals[0]), int(totals[1]), [len(m.payload) for m in messages], oldest)
        if victims:
            for start in range(0, len(victims), _CHUNK):
                chunk = victims[start:start + _CHUNK]
                cursor.execute(self._sql.delete_seqs(MESSAGES, len(chunk)),
                               dict(zip(_SEQ_PARAMS, (seq for seq, _, _ in chunk), strict=False)))
            mark = self._read_mark(cursor)
            changes = _tally(((subject, size) for seq, subject, size in victims if seq <= mark), pending=-1)
            self._bump(cursor, _tally(((subject, 0) for _, subject, _ in victims), kind=_DROPPED, into=changes),
                       outbox=outbox)
            self._removed_pending(cursor)
            self._note_removed("dropped", len(victims))

    def _bump(self, cursor: Any, changes: Changes, outbox: bool = False, keep: Iterable[str] = ()) -> None:
        """Add a transaction's changes to the counters, in the same transaction (``outbox``: a caller's, whose
        counters row must be no other writer's: see _OUTBOX_SHARDS)."""
        shard = 0 if self._sqlite else random.randrange(*(_OUTBOX_SHARDS if outbox else (0, _SHARDS)))
        # Subjects in sorted order: concurrent transactions lock counter rows in one order, so never deadlock.
        for subject in sorted(changes):
            values = changes[subject]
            if any(values) or (subject in keep and not self._lazy):
                cursor.execute(self._sql.bump, {"subject": subject, "shard": shard,
                                                **dict(zip(COUNTER_COLUMNS, values, strict=True))})
            elif self._lazy:
                # Rows that left sqlite's uncounted tail: their subject keeps a counters row (at zero) all the
                # same, as a drained subject does.
                cursor.execute(self._sql.touch, {"subject": subject})

    # ---------------------------------------------------------------- sqlite's lazy count of new messages
    #
    # Invariant, kept by every writer inside its write transaction: a pending row is in the counters exactly when
    # its seq <= the mark (pbuffer_counted.up_to_seq), and every row sqlite will insert next gets a seq above the
    # mark. sqlite gives a new row max(seq) + 1, so the second half holds as long as the mark never exceeds the
    # largest seq present: a removal that takes the newest rows lowers the mark to the largest seq left.

    def _maybe_fold(self, cursor: Any, last_seq: int | None) -> None:
        """After a save's insert (in its transaction): fold the tail into the counters once it may hold
        ``_FOLD_EVERY`` rows. ``last_seq``: the inserted row's seq (``None`` after a batch: asked for)."""
        if last_seq is None:
            cursor.execute(self._sql.newest_seq)
            last_seq = int(cursor.fetchone()[0] or 0)
        mark = self._mark
        every = _FOLD_EVERY_LIMITED if self.limits.bounded else _FOLD_EVERY
        # last_seq <= mark: the mark moved since this process saw it (another process folded, or removals
        # lowered it): look again.
        if mark is not None and mark < last_seq < mark + every:
            return
        cursor.execute(self._sql.fold)
        cursor.execute(self._sql.move_mark)
        self._mark = int(cursor.fetchone()[0])

    def _read_mark(self, cursor: Any) -> int:
        """The mark, read in the caller's write transaction; on server databases every row is counted."""
        if not self._lazy:
            return _NO_LIMIT
        cursor.execute(self._sql.mark)
        return int(cursor.fetchone()[0])

    def _removed_pending(self, cursor: Any) -> None:
        """After pending rows were removed in this transaction: lower the mark if the newest rows went."""
        if self._lazy:
            cursor.execute(self._sql.lower_mark)

    def _remove_rows(self, cursor: Any, table: str, ids: list[bytes]) -> list[tuple[str, int, bool]]:
        """Delete the rows with these ids (at most _CHUNK) in scope; returns each one's subject, size and whether
        it was in the counters (a pending row above sqlite's mark is not)."""
        params: dict[str, Any] = dict(zip(_ID_PARAMS, ids, strict=False))
        params.update(self._sql.scope)
        if not self._sql.by_seq:
            cursor.execute(self._sql.delete_ids(table, len(ids)), params)
            return [(subject, int(size), bool(counted)) for subject, size, counted in cursor.fetchall()]
        # MariaDB/MySQL: a DELETE or locking read by id may scan the primary key (small tables) and then waits on
        # every row it passes that another transaction holds, an open outbox transaction's new row among them.
        # So: find the seqs without locking, then lock and delete exactly those rows by primary key.
        cursor.execute(self._sql.seqs_of_ids(table, len(ids)), params)
        seqs = dict(zip(_SEQ_PARAMS, (row[0] for row in cursor.fetchall()), strict=False))
        if not seqs:
            return []
        if self._sql.delete_returning:
            cursor.execute(self._sql.delete_seqs_returning(table, len(seqs)), seqs)
            return [(subject, int(size), True) for subject, size in cursor.fetchall()]
        cursor.execute(self._sql.lock_seqs(table, len(seqs)), seqs)
        rows = cursor.fetchall()
        if rows:
            cursor.execute(self._sql.delete_seqs(table, len(rows)),
                           dict(zip(_SEQ_PARAMS, (row[0] for row in rows), strict=False)))
        return [(subject, int(size), True) for _, subject, size in rows]

    def _get(self, limit: int | None, after: str | None) -> list[Message]:
        with self._cursor("get", write=False) as cursor:
            if after is not None:
                cursor.execute(self._sql.get_after, {**self._sql.scope, "after": to_bytes(after),
                                                     "limit": _NO_LIMIT if limit is None else limit})
            elif limit is None:
                cursor.execute(self._sql.get_all, self._sql.scope)
            else:
                cursor.execute(self._sql.get_limit, {**self._sql.scope, "limit": limit})
            rows = cursor.fetchall()
        return [_message(row) for row in rows]

    def _pop(self, now_us: int) -> Message | None:
        params = {**self._sql.scope, "now": now_us}
        with self._cursor("pop", write=True) as cursor:
            if self._sql.pop_returning:
                cursor.execute(self._sql.pop, params)
                row = cursor.fetchone()
            else:
                cursor.execute(self._sql.pop_lock, params)
                found = cursor.fetchone()
                row = found[1:] if found else None
                if found:
                    cursor.execute(self._sql.delete_seq, {"seq": found[0]})
            # Verified inside the transaction: a damaged row raises and its delete is rolled back.
            message = None if row is None else _message(row[:6])
            if message is not None:
                # (sqlite returns whether the row was in the counters)
                counted = not self._lazy or row[6]
                self._bump(cursor, {message.subject: [-1, -len(message.payload), 0, 0, 0, 0] if counted else
                                    [0, 0, 0, 0, 0, 0]})
                if self._lazy and row[7]:  # a pop takes the oldest row: rarely also the newest
                    self._removed_pending(cursor)
        if message is not None:
            self._removed(1)
        return message

    def _claim(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int) -> list[Message]:
        return self._claim_skipping(limit, after, owner, until_us, now_us, frozenset())

    def _claim_skipping(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                        skip: frozenset[str]) -> list[Message]:
        if len(skip) > _CHUNK:  # more held-back subjects than one statement lists: the contract's generic way
            return super()._claim_skipping(limit, after, owner, until_us, now_us, skip)
        params = {**self._sql.scope, "now": now_us, "owner": to_bytes(owner), "limit": limit}
        if after is not None:
            params["after"] = to_bytes(after)
        if skip:
            params.update(zip(_SKIP_PARAMS, sorted(skip), strict=False))
            statement = self._sql.claim_skipping(len(skip), after is not None)
        else:
            statement = self._sql.claim if after is None else self._sql.claim_after
        with self._cursor("claim", write=True) as cursor:
            if after is not None and not self._sqlite:
                # A late commit: a row older than `after` committed after this owner claimed past its place. A
                # window behind `after` would publish its producer's later messages before it: claim nothing, so
                # the relay starts again from the oldest (sqlite commits in insert order: never late).
                cursor.execute(self._sql.late_before(len(skip)), params)
                if cursor.fetchall():
                    return []
            # Server databases: FOR UPDATE SKIP LOCKED, so competing claimers pass each other's rows by.
            cursor.execute(statement, params)
            rows = cursor.fetchall()
            # Verified before the claim commits: a damaged row raises (the relay dead-letters it) and nothing is
            # claimed.
            messages = [_message(row[1:]) for row in rows]
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start:start + _CHUNK]
                claim = dict(zip(_SEQ_PARAMS, (row[0] for row in chunk), strict=False))
                cursor.execute(self._sql.set_claims(len(chunk)), {**claim, "owner": params["owner"],
                                                                   "until": until_us})
        return messages

    def _release(self, message_ids: list[str], owner: str) -> int:
        released = 0
        with self._cursor("release", write=True) as cursor:
            for start in range(0, len(message_ids), _CHUNK):
                chunk = [to_bytes(message_id) for message_id in message_ids[start:start + _CHUNK]]
                params = dict(zip(_ID_PARAMS, chunk, strict=False))
                cursor.execute(self._sql.release(len(chunk)), {**params, "owner": to_bytes(owner)})
                released += max(cursor.rowcount, 0)
        return released

    def _delete(self, message_id: str) -> bool:
        return self._delete_many([message_id]) > 0

    def _delete_many(self, message_ids: list[str]) -> int:
        # The relay's delete after a window of PubAcks: one transaction, one statement per chunk of ids; the
        # dead letters are only searched for ids that were not pending.
        return self._remove_ids(message_ids, "delete", kind=None)

    def _discard(self, message_ids: list[str], kind: str) -> int:
        return self._remove_ids(message_ids, "discard", kind=_KIND[kind])

    def _remove_ids(self, message_ids: list[str], where: str, kind: int | None) -> int:
        """Delete these messages in one transaction and count them. ``kind`` (dropped, expired): pending messages
        only, each counted there too; ``None``: pending messages and dead letters."""
        removed = 0
        with self._cursor(where, write=True) as cursor:
            changes: Changes = {}
            for start in range(0, len(message_ids), _CHUNK):
                chunk = [to_bytes(message_id) for message_id in message_ids[start:start + _CHUNK]]
                pending = self._remove_rows(cursor, MESSAGES, chunk)
                _tally(((subject, size) for subject, size, counted in pending if counted), pending=-1, into=changes)
                _tally(((subject, size) for subject, size, counted in pending if not counted), into=changes)
                if kind is not None:
                    _tally(((subject, 0) for subject, _, _ in pending), kind=kind, into=changes)
                dead = (self._remove_rows(cursor, DEAD_LETTERS, chunk)
                        if kind is None and len(pending) < len(chunk) else [])
                _tally(((subject, size) for subject, size, _ in dead), dead=-1, into=changes)
                removed += len(pending) + len(dead)
            folded: set[str] = set()
            if not self._sqlite and time.monotonic() - self._outbox_folded_at >= _FOLD_OUTBOX_EVERY:
                folded = self._fold_outbox_counters(cursor, changes)
            self._bump(cursor, changes, keep=folded)
            if removed:
                self._removed_pending(cursor)
        self._removed(removed)
        return removed

    def _fold_outbox_counters(self, cursor: Any, changes: Changes) -> set[str]:
        """Server databases, in a relay's delete: move the counters rows of committed outbox saves (each its own,
        see _OUTBOX_SHARDS) into ``changes``, so the counters table stays about subjects x shards rows. Rows of
        open transactions are invisible or locked: passed over (SKIP LOCKED), never waited for. Returns the
        subjects folded (each keeps a shared counters row, at zero if need be: drained subjects stay listed)."""
        self._outbox_folded_at = time.monotonic()
        cursor.execute(self._sql.outbox_counters, {"limit": _FOLD_OUTBOX_ROWS})
        rows = cursor.fetchall()
        if not rows:
            return set()
        cursor.executemany(self._sql.delete_counter, [{"subject": row[0], "shard": row[1]} for row in rows])
        for subject, _, *values in rows:
            total = changes.setdefault(subject, [0, 0, 0, 0, 0, 0])
            for i, value in enumerate(values):
                total[i] += int(value)
        return {row[0] for row in rows}

    # ----------------------------------------------------------------------------------------------- outbox

    def _insert_in(self, messages: list[Message], connection: object) -> Any:
        """The outbox (see :meth:`Buffer._insert_in`): the rows, their counters and any drops go through the
        caller's transaction.

        Nothing it writes holds a lock another writer waits for: the counters go to a row of this save's own
        (server databases: a shard from _OUTBOX_SHARDS); limits take no turn on the limits lock and drop only
        unclaimed, unlocked messages. sqlite just inserts: the rows land in the uncounted tail (see _maybe_fold),
        which the next plain save folds once they are committed.
        """
        conn, target = caller_connection(connection)
        if self.serialize_writes:
            raise ConfigurationError(
                f"this sqlite buffer runs in one-writer mode (serialize_writes: sqlite {sqlite3.sqlite_version} "
                "has the WAL-reset bug), and your connection's writes would bypass its lock; nothing was written. "
                "Use a sqlite library without the bug (3.51.3+, 3.50.7+, 3.44.6+), or open the buffer with "
                "serialize_writes=False if only one process writes to the file")
        self._check_same_database(conn)
        cursor = _CallerCursor(conn, self._sql.raw)
        try:
            if self.limits.bounded:
                try:
                    self._make_room(cursor, messages, outbox=True)
                except BufferFullError as exc:
                    if self.limits.overflow != "block":
                        raise
                    raise BufferFullError(f"{exc}; overflow='block' cannot wait inside your transaction (room "
                                          "is made by relays whose deletes your open transaction may need): "
                                          "nothing was written") from None
            cursor.executemany(self._sql.insert, [_row(message) for message in messages])
            if not self._lazy:
                self._bump(cursor, _tally(((m.subject, len(m.payload)) for m in messages), pending=1), outbox=True)
            if self._notify_sql:
                cursor.execute(self._notify_sql)
        except sa.exc.DBAPIError as exc:
            # The caller's transaction is the caller's to roll back: only the error is ours to map.
            orig = exc.orig if exc.orig is not None else exc
            if is_missing_table(orig):
                raise self._schema_changed("save") from exc
            raise map_driver_error(orig, "save") from exc
        return target

    def _check_same_database(self, conn: sa.Connection) -> None:
        url = conn.engine.url
        key = url.render_as_string(hide_password=False)
        if key not in self._same_database:
            self._same_database[key] = same_database(url, self.url, sqlite_path)
        reason = self._same_database[key]
        if reason is not None:
            raise ConfigurationError(
                f"connection= is not on this buffer's database ({self._database.display_url}): {reason}. The outbox "
                "writes the message in your transaction, so it must be the same database (same server and "
                "database name, or the same sqlite file); nothing was written")

    # -------------------------------------------------------------------- PostgreSQL: LISTEN for other processes

    def add_listener(self, callback: Callable[[], object]) -> None:
        super().add_listener(callback)
        if self._listens:
            with self._listen_lock:
                if self._listen_thread is None and not self._closed:
                    self._listen_thread = threading.Thread(target=self._listen, name="pbuffer-listen", daemon=True)
                    self._listen_thread.start()

    def _listen(self) -> None:
        """Wake this buffer's listeners at every save another connection commits (each NOTIFYs, see _insert),
        until the buffer is closed. After (re)connecting it wakes them once: saves may have committed unheard."""
        connection: Any = None
        first = True
        while not self._listen_stop.is_set():
            try:
                if connection is None:
                    connection = self._connections.take("listen")
                    connection.autocommit = True
                    connection.execute(f"LISTEN {_CHANNEL}")
                    if not first:
                        self._notify()
                    first = False
                for notification in connection.notifies(timeout=_LISTEN_TICK, stop_after=1):
                    if notification.payload != self._token:
                        self._notify()
            except Exception as exc:  # a lost connection: listen again on a new one (polling covers the gap)
                _log.debug("listening for saves failed, listening again: %s", exc)
                if connection is not None:
                    self._connections.discard(connection)
                    connection = None
                self._listen_stop.wait(_LISTEN_TICK)
        if connection is not None:
            self._connections.discard(connection)

    def _count_removed(self, message: Message, kind: str) -> None:
        with self._cursor("count", write=True) as cursor:
            self._bump(cursor, _tally([(message.subject, 0)], kind=_KIND[kind]))

    def _stats(self, now_us: int) -> BufferStats:
        with self._cursor("stats", write=False) as cursor:
            cursor.execute(self._sql.totals, self._sql.scope)
            totals = [int(value) for value in cursor.fetchone()]
            cursor.execute(self._sql.oldest_created, self._sql.scope)
            oldest = cursor.fetchone()
        age = None if oldest is None else max(0.0, (now_us - int(oldest[0])) / 1e6)
        return BufferStats(totals[0], totals[1], totals[2], totals[3], age, totals[4], totals[5])

    def _subject_stats(self) -> dict[str, SubjectStats]:
        with self._cursor("stats", write=False) as cursor:
            cursor.execute(self._sql.subject_totals, self._sql.scope)
            return {str(row[0]): SubjectStats(*(int(value) for value in row[1:])) for row in cursor.fetchall()}

    def _claim_stats(self, window: int, now_us: int) -> ClaimStats:
        with self._cursor("claim_stats", write=False) as cursor:
            cursor.execute(self._sql.claim_stats, {**self._sql.scope, "limit": window, "now": now_us})
            looked_at, held, owners, until = cursor.fetchone()
        return ClaimStats(int(held or 0), int(owners or 0), None if until is None else int(until), int(looked_at))

    def _removed(self, count: int) -> None:
        """Count removed rows; every so often, see whether space should go back to the filesystem."""
        if not self._sqlite or not count:
            return
        self._removed_since_check += count
        if self._removed_since_check >= _RECLAIM_EVERY:
            self._removed_since_check = 0
            try:
                self.reclaim()
            except PBufferError as exc:  # the messages were removed; space can wait for the next check
                _log.debug("reclaiming space failed: %s", exc)

    def reclaim(self, *, force: bool = False) -> int:
        """sqlite: give free pages back to the filesystem (the file was made with auto_vacuum=INCREMENTAL).

        Done by itself after large deletes, once at least a quarter of the file (and 4 MiB) is free; ``force``
        reclaims whatever is free now. Runs in short transactions, so savers wait at most one step. Returns how
        many pages were released; 0 on other backends.
        """
        if not self._sqlite:
            return 0
        with self._cursor("reclaim", write=False) as cursor:
            free = int(cursor.execute("PRAGMA freelist_count").fetchone()[0])
            total = int(cursor.execute("PRAGMA page_count").fetchone()[0])
        if not force and (free < _RECLAIM_MIN_PAGES or free * 4 < total):
            return 0
        released = 0
        while released < free:
            step = min(_RECLAIM_STEP, free - released)
            with self._write_lock:
                conn = self._connections.take("reclaim")
                try:
                    # executescript steps the pragma to completion; a cursor's execute frees one page per call.
                    conn.executescript(f"BEGIN IMMEDIATE; PRAGMA incremental_vacuum({int(step)}); COMMIT;")
                except BaseException as exc:
                    self._failed(conn, exc, "reclaim")
                self._connections.give_back(conn)
            released += step
        # Let the released pages leave the main file now rather than at the next automatic checkpoint; under
        # the write lock (when there is one), so the checkpoint overlaps no write.
        with self._write_lock, self._cursor("reclaim", write=False) as cursor:
            cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        _log.info("released %d free pages of %d", released, total)
        return released

    def _count(self) -> int:
        with self._cursor("count", write=False) as cursor:
            cursor.execute(self._sql.count, self._sql.scope)
            return int(cursor.fetchone()[0])

    def _mark_dead(self, message_id: str, reason: str, attempts: int, now_us: int) -> bool:
        with self._cursor("mark_dead", write=True) as cursor:
            # Locks the row (server databases), so a concurrent pop and this move cannot both take it.
            cursor.execute(self._sql.lock_pending_id, {**self._sql.scope, "id": to_bytes(message_id)})
            row = cursor.fetchone()
            if row is None:
                return False
            # Not verified: a damaged message must still be movable out of the way.
            cursor.execute(self._sql.insert_dead, {**dict(zip(_SEQ_COLUMNS[1:], row[1:], strict=True)),
                                                   "reason": reason, "attempts": attempts, "failed_us": now_us})
            cursor.execute(self._sql.delete_seq, {"seq": row[0]})
            counted = row[0] <= self._read_mark(cursor)
            self._bump(cursor, _tally([(row[2], len(row[3]))], pending=-1 if counted else 0, dead=1))
            self._removed_pending(cursor)
            return True

    def _dead_letters(self, limit: int | None) -> list[DeadLetter]:
        with self._cursor("dead_letters", write=False) as cursor:
            if limit is None:
                cursor.execute(self._sql.dead_all, self._sql.scope)
            else:
                cursor.execute(self._sql.dead_limit, {**self._sql.scope, "limit": limit})
            rows = cursor.fetchall()
        return [DeadLetter(_message(row[:6]), row[6], int(row[7]), from_micros(int(row[8]))) for row in rows]

    def _requeue(self, message_id: str) -> bool:
        with self._cursor("requeue", write=True) as cursor:
            cursor.execute(self._sql.lock_dead_id, {**self._sql.scope, "id": to_bytes(message_id)})
            row = cursor.fetchone()
            if row is None:
                return False
            # Inserted anew, the message gets a new seq: the back of the queue. Its id, and so its
            # deduplication by JetStream, is unchanged.
            cursor.execute(self._sql.insert, dict(zip(_SEQ_COLUMNS[1:], row[1:], strict=True)))
            cursor.execute(self._sql.delete_dead_seq, {"seq": row[0]})
            # On sqlite the new row is in the uncounted tail (its seq is above the mark).
            self._bump(cursor, _tally([(row[2], len(row[3]))], pending=0 if self._lazy else 1, dead=-1))
            return True

    def _close(self) -> None:
        self._listen_stop.set()
        if self._listen_thread is not None and self._listen_thread is not threading.current_thread():
            self._listen_thread.join(timeout=2 * _LISTEN_TICK + 1)
        try:
            with self._write_lock:  # closing the last connection checkpoints
                self._connections.close()
                self._database.dispose()
        except PBufferError as exc:
            # The write lock stayed held by another process (stopped, hung): close anyway, rather than leave the
            # connections to be closed (and checkpointed) at exit just the same.
            _log.warning("closing %s without the write lock: %s", self, exc)
            self._connections.close()
            self._database.dispose()
        finally:
            if isinstance(self._write_lock, sqlite_file.WriteLock):
                self._write_lock.close()


def _row_values(message: Message) -> tuple[Any, ...]:
    """:func:`_row` as a tuple, in the order of ``_COLUMNS``."""
    headers = encode_headers(message.headers)
    return (to_bytes(message.id), message.subject, message.payload, headers, message.created_us,
            checksum(message.id, message.subject, headers, message.created_us, message.payload))


def _row(message: Message) -> dict[str, Any]:
    """The columns of a message, with its checksum."""
    headers = encode_headers(message.headers)
    return {"id": to_bytes(message.id), "subject": message.subject, "payload": message.payload,
            "headers": headers, "created_us": message.created_us,
            "checksum": checksum(message.id, message.subject, headers, message.created_us, message.payload)}


def _tally(removed: Iterable[tuple[str, int]], *, pending: int = 0, dead: int = 0, kind: int | None = None,
           into: Changes | None = None) -> Changes:
    """Counter changes for rows of (subject, payload size) that moved by ``pending`` and ``dead`` (+1, -1 or 0),
    each also counted once in ``kind`` (dropped or expired) when given."""
    changes: Changes = {} if into is None else into
    for subject, size in removed:
        values = changes.get(subject)
        if values is None:
            values = changes[subject] = [0, 0, 0, 0, 0, 0]
        values[0] += pending
        values[1] += pending * size
        values[2] += dead
        values[3] += dead * size
        if kind is not None:
            values[kind] += 1
    return changes


def _message(row: Sequence[Any]) -> Message:
    """A Message from (id, subject, payload, headers, created_us, checksum), checksum verified."""
    raw_id, subject, payload, headers, created_us, crc = row
    message_id = from_bytes(bytes(raw_id)) if len(raw_id) == 16 else repr(bytes(raw_id))
    payload = bytes(payload)
    created_us = int(created_us)
    if checksum(message_id, subject, headers, created_us, payload) != int(crc):
        raise CorruptDatabaseError(f"message {message_id} failed its checksum: its stored bytes are damaged",
                                   message_id=message_id)
    try:
        decoded = decode_headers(headers)
    except ValueError as exc:  # pragma: no cover - the checksum catches this first
        raise CorruptDatabaseError(f"message {message_id} has unreadable headers", message_id=message_id) from exc
    return Message(message_id, subject, payload, decoded, created_us)


class _CallerCursor:
    """The DBAPI-cursor face the shared steps (_make_room, _bump) use, over a caller's SQLAlchemy Connection.

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


class _Connections:
    """DBAPI connections made through the engine (so its connect event applies the pragmas), reused last-in
    first-out. The hot paths use these instead of SQLAlchemy's pool, whose per-checkout bookkeeping costs about
    as much as a sqlite commit. ``list.pop`` and ``list.append`` are atomic, so no lock is needed.
    """

    def __init__(self, engine: Engine, keep: int) -> None:
        self._engine = engine
        self._keep = keep
        self._idle: list[Any] = []
        self._closed = False

    def take(self, where: str) -> Any:
        if self._closed:
            # A call that passed the buffer's open check before another thread closed it: refused, nothing done.
            raise BackendError(f"{where}: the buffer was closed (by another thread); nothing was written")
        try:
            return self._idle.pop()
        except IndexError:
            pass
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
            self._idle.append(connection)

    def discard(self, connection: Any) -> None:
        # It is being thrown away: the error that brought us here is the one that matters.
        with suppress(Exception):
            connection.rollback()
        with suppress(Exception):
            connection.close()

    def clear(self) -> None:
        """Close the idle connections; the next user gets a new one."""
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        self._closed = True
        self.clear()


class _Statements:
    """The fixed SQL the hot paths run, compiled once for the engine's dialect and the buffer's scope.

    Written with ``:name`` parameters (sqlite takes them natively); other dialects get SQLAlchemy's rendering for
    their driver's paramstyle. Table and column names are constants: nothing from a caller is ever spliced in.
    """

    def __init__(self, engine: Engine, subject: str | None) -> None:
        dialect = engine.dialect
        sqlite = dialect.name == "sqlite"
        self.scope: dict[str, Any] = {} if subject is None else {"subject": subject}
        where = "" if subject is None else " WHERE subject = :subject"
        and_scope = "" if subject is None else " AND subject = :subject"
        # Server databases lock what they read before moving it; sqlite's BEGIN IMMEDIATE already serializes.
        for_update = "" if sqlite else " FOR UPDATE"
        # Competing poppers skip each other's locked rows instead of queueing behind them.
        skip_locked = "" if sqlite else " FOR UPDATE SKIP LOCKED"

        #: Each compiled statement's dialect-neutral SQL: the outbox runs it on a caller's connection (_CallerCursor).
        self.raw: dict[str, str] = {}

        def compile_(sql: str) -> str:
            compiled = sql if sqlite else str(sa.text(sql).compile(dialect=dialect))
            self.raw[compiled] = sql
            return compiled

        self._compile = compile_
        self._and_scope = and_scope
        self._by_count: dict[tuple[str, int], str] = {}

        values = ", ".join(f":{column}" for column in _COLUMNS.split(", "))
        self.insert = compile_(f"INSERT INTO {MESSAGES} ({_COLUMNS}) VALUES ({values})")
        # What save() runs: positional on sqlite (see _row_values), named elsewhere (see _row).
        self.insert_row = f"INSERT INTO {MESSAGES} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)" if sqlite else self.insert
        self.insert_dead = compile_(f"INSERT INTO {DEAD_LETTERS} ({_COLUMNS}, reason, attempts, failed_us) "
                                    f"VALUES ({values}, :reason, :attempts, :failed_us)")
        self.get_all = compile_(f"SELECT {_COLUMNS} FROM {MESSAGES}{where} ORDER BY seq")
        self.get_limit = compile_(f"SELECT {_COLUMNS} FROM {MESSAGES}{where} ORDER BY seq LIMIT :limit")
        # seq values start at 1, so 0 means "from the oldest" when `after` is not pending.
        after_seq = f"COALESCE((SELECT seq FROM {MESSAGES} WHERE id = :after), 0)"
        self.get_after = compile_(f"SELECT {_COLUMNS} FROM {MESSAGES} WHERE seq > {after_seq}{and_scope} "
                                  "ORDER BY seq LIMIT :limit")
        self.count = compile_(f"SELECT count(*) FROM {MESSAGES}{where}")
        self.delete_seq = compile_(f"DELETE FROM {MESSAGES} WHERE seq = :seq")
        self.delete_dead_seq = compile_(f"DELETE FROM {DEAD_LETTERS} WHERE seq = :seq")
        self.lock_pending_id = compile_(f"SELECT seq, {_COLUMNS} FROM {MESSAGES} WHERE id = :id{and_scope}"
                                        f"{for_update}")
        self.lock_dead_id = compile_(f"SELECT seq, {_COLUMNS} FROM {DEAD_LETTERS} WHERE id = :id{and_scope}"
                                     f"{for_update}")
        self.dead_all = compile_(f"SELECT {_DEAD_COLUMNS} FROM {DEAD_LETTERS}{where} ORDER BY seq")
        self.dead_limit = compile_(f"SELECT {_DEAD_COLUMNS} FROM {DEAD_LETTERS}{where} ORDER BY seq "
                                   "LIMIT :limit")
        # A message is free to claim or pop when nobody claimed it, or the claim's lease ran out.
        free = "(claim_until_us IS NULL OR claim_until_us < :now)"
        # DELETE ... RETURNING pops in one statement (sqlite >= 3.35, PostgreSQL); MariaDB locks, then deletes.
        self.pop_returning = dialect.name in ("sqlite", "postgresql")
        oldest = f"SELECT seq FROM {MESSAGES} WHERE {free}{and_scope} ORDER BY seq LIMIT 1{skip_locked}"
        # sqlite also returns whether the row was in the counters (its seq at or below the mark).
        counted_flag = f"seq <= (SELECT up_to_seq FROM {COUNTED})" if sqlite else "1"
        self._counted_flag = counted_flag
        # ...and whether it was the newest row (only then can the mark have to come down: see _removed_pending).
        newest_flag = (f"NOT EXISTS (SELECT 1 FROM {MESSAGES} AS later WHERE later.seq > {MESSAGES}.seq)" if sqlite
                       else "0")
        self.pop = compile_(f"DELETE FROM {MESSAGES} WHERE seq = ({oldest}) RETURNING {_COLUMNS}, {counted_flag}, "
                            f"{newest_flag}")
        self.pop_lock = compile_(f"SELECT seq, {_COLUMNS} FROM {MESSAGES} WHERE {free}{and_scope} ORDER BY seq "
                                 f"LIMIT 1{skip_locked}")
        claimable = "(claim_until_us IS NULL OR claim_until_us < :now OR claim_owner = :owner)"
        self.claim = compile_(f"SELECT seq, {_COLUMNS} FROM {MESSAGES} WHERE {claimable}{and_scope} ORDER BY seq "
                              f"LIMIT :limit{skip_locked}")
        self.claim_after = compile_(f"SELECT seq, {_COLUMNS} FROM {MESSAGES} WHERE seq > {after_seq} AND "
                                    f"{claimable}{and_scope} ORDER BY seq LIMIT :limit{skip_locked}")
        self._claim_parts = (claimable, and_scope, after_seq, skip_locked)
        self._counter_statements(dialect.name, compile_, where, and_scope)
        # The head of the queue, where relays claim: an index range of :limit rows.
        self.claim_stats = compile_(
            "SELECT COUNT(*), SUM(CASE WHEN claim_until_us >= :now THEN 1 ELSE 0 END), COUNT(DISTINCT CASE WHEN "
            "claim_until_us >= :now THEN claim_owner END), MAX(CASE WHEN claim_until_us >= :now THEN claim_until_us "
            f"END) FROM (SELECT claim_owner, claim_until_us FROM {MESSAGES}{where} ORDER BY seq LIMIT :limit) head")
        self.oldest_created = compile_(f"SELECT created_us FROM {MESSAGES}{where} ORDER BY seq LIMIT 1")
        # Rows an outbox save holds deleted until its caller commits are passed over, not waited for.
        self.oldest_sizes = compile_(f"SELECT seq, subject, length(payload) FROM {MESSAGES}{where} ORDER BY seq "
                                     f"LIMIT :limit{skip_locked}")
        # An outbox save's drop_oldest (server databases): only rows no relay holds, so no relay's delete waits for
        # the caller's commit.
        self.outbox_oldest = compile_(f"SELECT seq, subject, length(payload) FROM {MESSAGES} WHERE {free}{and_scope} "
                                      f"ORDER BY seq LIMIT :limit{skip_locked}")
        # The row that writers enforcing limits on a server database take turns on (revision 0002 made it).
        self.limit_lock = compile_(f"SELECT shard FROM {COUNTERS} WHERE subject = '' AND shard = -1 FOR UPDATE")
        self.delete_returning = bool(dialect.delete_returning)
        # MariaDB/MySQL remove rows by id in two steps (see SQLBuffer._remove_rows), and bound every UPDATE or
        # DELETE of listed rows with LIMIT: without it the optimizer may scan a small table whole, and a scanning
        # DELETE waits on each row another transaction holds (an open outbox transaction's new row, say).
        self.by_seq = dialect.name in ("mysql", "mariadb")
        self._for_update = for_update

    def _counter_statements(self, dialect: str, compile_: Callable[[str], str], where: str, and_scope: str) -> None:
        """The counters' statements: the upsert every write runs, and the reads (with sqlite's uncounted tail)."""
        added = ", ".join(f":{name}" for name in COUNTER_COLUMNS)
        if dialect in ("mysql", "mariadb"):
            upsert = "ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = {c} + VALUES({c})" for c in COUNTER_COLUMNS)
        else:
            upsert = "ON CONFLICT (subject, shard) DO UPDATE SET " + ", ".join(
                f"{c} = {COUNTERS}.{c} + excluded.{c}" for c in COUNTER_COLUMNS)
        self.bump = compile_(f"INSERT INTO {COUNTERS} (subject, shard, {', '.join(COUNTER_COLUMNS)}) VALUES "
                             f"(:subject, :shard, {added}) {upsert}")
        # The outbox's own counters rows (shard _SHARDS and up), folded back by relays' deletes (server databases).
        skip_locked = "" if dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
        self.outbox_counters = compile_(f"SELECT subject, shard, {', '.join(COUNTER_COLUMNS)} FROM {COUNTERS} "
                                        f"WHERE shard >= {_SHARDS} LIMIT :limit{skip_locked}")
        self.delete_counter = compile_(f"DELETE FROM {COUNTERS} WHERE subject = :subject AND shard = :shard")
        sums = ", ".join(f"COALESCE(SUM({c}), 0) AS {c}" for c in COUNTER_COLUMNS)
        totals = f"SELECT {sums} FROM {COUNTERS}{where}"
        # shard -1 is no subject's: the lock row that writers enforcing limits take on servers (revision 0002).
        rows = f"SELECT subject, {', '.join(COUNTER_COLUMNS)} FROM {COUNTERS} WHERE shard >= 0{and_scope}"
        if dialect == "sqlite":
            # The counters plus the uncounted tail, each in one statement: one consistent snapshot, no transaction.
            tail = f"FROM {MESSAGES} WHERE seq > (SELECT up_to_seq FROM {COUNTED}){and_scope}"
            totals = (f"SELECT c.pending + t.pending, c.pending_bytes + t.pending_bytes, c.dead, c.dead_bytes, "
                      f"c.dropped, c.expired FROM ({totals}) c, (SELECT COUNT(*) AS pending, "
                      f"COALESCE(SUM(LENGTH(payload)), 0) AS pending_bytes {tail}) t")
            rows = f"{rows} UNION ALL SELECT subject, 1, LENGTH(payload), 0, 0, 0, 0 {tail}"
        self.totals = compile_(totals)
        self.subject_totals = compile_("SELECT subject, " + ", ".join(f"SUM({c})" for c in COUNTER_COLUMNS) +
                                       f" FROM ({rows}) counted GROUP BY subject")
        # sqlite's lazy count (see SQLBuffer._maybe_fold): fold the tail in, move the mark to the newest row.
        self.mark = f"SELECT up_to_seq FROM {COUNTED}"
        self.touch = (f"INSERT INTO {COUNTERS} (subject, shard, {', '.join(COUNTER_COLUMNS)}) VALUES (:subject, 0"
                      f"{', 0' * len(COUNTER_COLUMNS)}) ON CONFLICT (subject, shard) DO NOTHING")
        self.newest_seq = f"SELECT MAX(seq) FROM {MESSAGES}"
        self.fold = (f"INSERT INTO {COUNTERS} (subject, shard, pending, pending_bytes, dead, dead_bytes, dropped, "
                     f"expired) SELECT subject, 0, COUNT(*), SUM(LENGTH(payload)), 0, 0, 0, 0 FROM {MESSAGES} "
                     f"WHERE seq > (SELECT up_to_seq FROM {COUNTED}) GROUP BY subject ON CONFLICT (subject, shard) DO "
                     "UPDATE SET pending = pending + excluded.pending, "
                     "pending_bytes = pending_bytes + excluded.pending_bytes")
        self.move_mark = (f"UPDATE {COUNTED} SET up_to_seq = (SELECT COALESCE(MAX(seq), 0) FROM {MESSAGES}) "
                          "RETURNING up_to_seq")
        newest = f"(SELECT COALESCE(MAX(seq), 0) FROM {MESSAGES})"
        self.lower_mark = f"UPDATE {COUNTED} SET up_to_seq = {newest} WHERE up_to_seq > {newest}"

    def _in_list(self, key: str, count: int, build: Callable[[str], str], prefix: str = "id") -> str:
        sql = self._by_count.get((key, count))
        if sql is None:
            placeholders = ", ".join(f":{prefix}{i}" for i in range(count))
            sql = self._by_count[(key, count)] = self._compile(build(placeholders))
        return sql

    def delete_ids(self, table: str, count: int) -> str:
        """Delete rows by id in scope, returning each one's subject and payload size."""
        counted = self._counted_flag if table == MESSAGES else "1"
        return self._in_list(f"delete {table}", count, lambda ids: (
            f"DELETE FROM {table} WHERE id IN ({ids}){self._and_scope} RETURNING subject, length(payload), "
            f"{counted}"))

    def seqs_of_ids(self, table: str, count: int) -> str:
        """MariaDB/MySQL: the seqs of rows with these ids in scope, read without locking (see _remove_rows)."""
        return self._in_list(f"seqs {table}", count, lambda ids: (
            f"SELECT seq FROM {table} WHERE id IN ({ids}){self._and_scope}"))

    def _limit(self, count: int) -> str:
        return f" LIMIT {int(count)}" if self.by_seq else ""

    def delete_seqs_returning(self, table: str, count: int) -> str:
        return self._in_list(f"delete seq returning {table}", count, lambda seqs: (
            f"DELETE FROM {table} WHERE seq IN ({seqs}){self._limit(count)} RETURNING subject, length(payload)"),
            prefix="s")

    def lock_seqs(self, table: str, count: int) -> str:
        """Where DELETE cannot return rows (MySQL): the rows to delete, locked by primary key."""
        return self._in_list(f"lock seq {table}", count, lambda seqs: (
            f"SELECT seq, subject, length(payload) FROM {table} WHERE seq IN ({seqs}){self._limit(count)}"
            f"{self._for_update}"), prefix="s")

    def delete_seqs(self, table: str, count: int) -> str:
        return self._in_list(f"delete seq {table}", count, lambda seqs: (
            f"DELETE FROM {table} WHERE seq IN ({seqs}){self._limit(count)}"), prefix="s")

    def claim_skipping(self, count: int, after: bool) -> str:
        """:attr:`claim` (or :attr:`claim_after`) passing over ``count`` subjects (params ``k0``...)."""
        claimable, and_scope, after_seq, skip_locked = self._claim_parts
        behind = f"seq > {after_seq} AND " if after else ""
        return self._in_list(f"claim skipping {after}", count, lambda subjects: (
            f"SELECT seq, {_COLUMNS} FROM {MESSAGES} WHERE {behind}{claimable}{and_scope} "
            f"AND subject NOT IN ({subjects}) ORDER BY seq LIMIT :limit{skip_locked}"), prefix="k")

    def late_before(self, skipping: int) -> str:
        """A row if ``:after`` is claimed by ``:owner`` and an older row in scope (not on a skipped subject,
        params ``k0``...) is free: one that committed after this owner claimed past it (see _claim_skipping)."""
        free = "(m.claim_until_us IS NULL OR m.claim_until_us < :now)"
        scope = " AND m.subject = :subject" if self._and_scope else ""
        return self._in_list("late", skipping, lambda subjects: (
            f"SELECT 1 FROM {MESSAGES} a WHERE a.id = :after AND a.claim_owner = :owner AND EXISTS (SELECT 1 FROM "
            f"{MESSAGES} m WHERE m.seq < a.seq AND {free}{scope}"
            + (f" AND m.subject NOT IN ({subjects})" if skipping else "") + ")"), prefix="k")

    def set_claims(self, count: int) -> str:
        return self._in_list("claim", count, lambda seqs: (
            f"UPDATE {MESSAGES} SET claim_owner = :owner, claim_until_us = :until WHERE seq IN ({seqs})"
            f"{self._limit(count)}"), prefix="s")

    def release(self, count: int) -> str:
        return self._in_list("release", count, lambda ids: (
            f"UPDATE {MESSAGES} SET claim_owner = NULL, claim_until_us = NULL WHERE id IN ({ids}) "
            f"AND claim_owner = :owner{self._limit(count)}"))
