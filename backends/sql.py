"""The SQLAlchemy backend: sqlite files, PostgreSQL (psycopg 3) and MariaDB/MySQL (PyMySQL).

SQLAlchemy provides the engine, the connection pool, the dialects and (through alembic) the schema; the hot paths
(save, pop, get) then run a handful of fixed statements on the pooled DBAPI connection, compiled once per dialect,
because SQLAlchemy's per-statement machinery would cost more than sqlite's own commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from sqlalchemy.engine import URL

from pbuffer.buffer import Buffer
from pbuffer.errors import ConfigurationError, PBufferError
from pbuffer.ids import to_bytes
from pbuffer.limits import BufferStats, ClaimStats, SubjectStats
from pbuffer.message import DeadLetter, Message, from_micros
from pbuffer.registry import SQL_SCHEMES

from . import sqlite_file
from .counters import Changes, Counts, removed_sums, tally, tally_removed
from .database import Database
from .sql_claims import claim_rows
from .sql_connections import Connections, Transactions
from .sql_counting import Counting
from .sql_listen import SaveListener
from .sql_outbox import insert_in_callers_transaction
from .sql_pop import pop_on_server
from .sql_removal import delete_by_seq, remove_rows
from .sql_rows import SEQ_COLUMNS, insert_rows, message_from_row, row_params, rows_values, sqlite_id
from .sql_statements import CHUNK, ID_PARAMS, NO_LIMIT, Statements, bind, chunks
from .sqlite_space import SpaceReclaimer
from .tables import DEAD_LETTERS, MESSAGES

__all__ = ["SQLBuffer"]

_log = logging.getLogger("pbuffer.backends.sql")

#: Bytes of a MariaDB/MySQL insert statement besides its escaped payload and headers (SQL text, id, subject...).
_STATEMENT_ROOM = 64 * 1024
# A server connection idle this long is tried before it is used (see Connections).
_PING_AFTER_IDLE_SECONDS = 1.0
# Most idle connections a buffer may keep: far above any useful thread count; more is a typo.
_MAX_POOL_SIZE = 10_000


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
        group_commit: saves from several threads share transactions (default: on). Where a commit waits for a
            disk flush or a server round trip (sqlite ``durability="power"``, PostgreSQL, MariaDB) they share the
            wait; with sqlite ``durability="process"`` a transaction of many rows costs little more than one of a
            single row (8 threads, paired quick benchmark runs: a median of 1.44x one thread grouped, 0.93x not;
            on a busier host 0.69-0.84x grouped, 0.69-0.71x not, and a third more messages a second).
        auto_upgrade: upgrade an older schema at open. Default: yes for sqlite (after a backup), no for server
            databases, which raise :class:`~pbuffer.SchemaTooOldError` naming the command to run.
        serialize_writes: sqlite only; one writer at a time across processes (a lock file beside the database),
            so checkpoints never overlap another connection's write. Default: on when the sqlite library has the
            WAL-reset bug (3.7.0-3.51.2 except 3.50.7+ and 3.44.6+), off otherwise.

    A sqlite path is used with its symlinks resolved (the lock file and backups sit beside the real file). A
    permission problem with the file, its directory or the files beside it raises
    :class:`~pbuffer.StoragePermissionError` naming the path and the permission.
    """

    schemes = SQL_SCHEMES
    counts_deletions = True

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
        self._sql = Statements(self._engine, self.subject)
        # sqlite: saves leave their rows uncounted (the tail above pbuffer_counted's mark); see Counting.maybe_fold.
        self._lazy = self._sqlite
        self._counting = Counting(self._sql, sqlite=self._sqlite, bounded=self.limits.bounded)
        self._connections = Connections(self._engine, keep=pool_size,
                                        ping_after=None if self._sqlite else _PING_AFTER_IDLE_SECONDS)
        self._tx = Transactions(database, self._connections, self._write_lock)
        self._space = SpaceReclaimer(self._tx)  # sqlite only
        # Callers' databases already found to be this one (or not: why), by their URL.
        self._same_database: dict[str, str | None] = {}
        # What the buffer's server says it is (see sql_outbox.check_same_database), read at the first outbox save.
        self._server_identity: tuple[str, ...] | None = None
        # PostgreSQL: saves NOTIFY at commit; with psycopg 3, a listener added to this buffer starts a thread that
        # LISTENs, so saves of other processes wake this one's relay too.
        dialect = self._engine.dialect
        self._listens = dialect.name == "postgresql" and dialect.driver == "psycopg"
        self._listener = SaveListener(self._connections, self._notify)
        self._notify_sql = self._listener.notify_sql if dialect.name == "postgresql" else ""
        if dialect.name in ("mysql", "mariadb"):
            self._limit_to_packet_size()

    def _limit_to_packet_size(self) -> None:
        """MariaDB/MySQL take one statement of at most ``max_allowed_packet`` bytes, and the driver sends a payload
        escaped inside the statement's text, up to twice its size: a larger one failed at save with "packet bigger
        than max_allowed_packet" or "server has gone away". Refuse it at save, naming the setting, instead."""
        with self._tx.cursor("open", write=False) as cursor:
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

    # --------------------------------------------------------------------------------------------- primitives

    def _insert(self, messages: list[Message]) -> None:
        # The hot path of save(): the steps of Transactions.cursor, spelled out to spare a generator per message.
        # sqlite binds positional parameters faster than named ones.
        rows: list[Any]
        if self._sqlite:
            rows, headed = rows_values(messages)
            insert = self._sql.insert_row if headed else self._sql.insert_bare
        else:
            rows, insert = [row_params(m) for m in messages], self._sql.insert_row
        with self._write_lock:
            conn = self._connections.take("save")
            alone: int | None = None  # the seq of a row committed by its INSERT alone
            try:
                cursor = conn.cursor()
                if self._sqlite and len(rows) == 1 and not self.limits.bounded:
                    # One row and no limits: the INSERT alone is the transaction, in sqlite's autocommit mode
                    # (BEGIN IMMEDIATE and COMMIT are two statements more: 15.9 against 14.6 us a save, measured on
                    # raw statements); a fold of the uncounted tail, when due, follows in a transaction of its own.
                    cursor.execute(insert, rows[0])
                    alone = cursor.lastrowid
                else:
                    self._insert_transaction(conn, cursor, messages, rows, insert)
            except BaseException as exc:
                self._tx.failed(conn, exc, "save")
            if alone is not None and not self._counting.fold_apart(conn, alone):
                self._connections.discard(conn)  # the save stands; a connection whose fold failed is not reused
            else:
                self._connections.give_back(conn)

    def _insert_transaction(self, conn: Any, cursor: Any, messages: list[Message], rows: list[Any],
                            insert: str) -> None:
        """The transaction of :meth:`_insert` (every save but a lone sqlite row without limits): BEGIN on sqlite,
        the limits, the rows, the counts, the commit."""
        if self._sqlite:
            cursor.execute("BEGIN IMMEDIATE")
        if self.limits.bounded:
            self._make_room(cursor, messages)
        if len(rows) == 1:
            cursor.execute(insert, rows[0])
            if self._lazy:
                self._counting.maybe_fold(cursor, cursor.lastrowid)
            else:
                message = messages[0]
                self._counting.bump(cursor, {message.subject: Counts(1, len(message.payload))})
        else:
            if self._sqlite:
                insert_rows(cursor, insert, rows)
            else:
                cursor.executemany(insert, rows)
            if self._lazy:
                self._counting.maybe_fold(cursor, None)
            else:
                self._counting.bump(cursor, tally(((m.subject, len(m.payload)) for m in messages), pending=1))
        if self._notify_sql:
            cursor.execute(self._notify_sql)
        self._tx.commit(conn, "save")

    def _make_room(self, cursor: Any, messages: list[Message]) -> None:
        """Inside a save's transaction: apply the size limits (raise, or drop the oldest pending messages). (An
        outbox save on a server database runs it in a transaction of its own: see sql_outbox.)"""
        if not self._sqlite:
            # Writers that enforce limits take turns on a server database (sqlite's BEGIN IMMEDIATE already does),
            # so two saves cannot both see the last free place.
            cursor.execute(self._sql.limit_lock)
            cursor.fetchall()
        cursor.execute(self._sql.totals, self._sql.scope)
        totals = Counts.from_row(cursor.fetchone())
        # Server databases read the oldest rows locked (SKIP LOCKED) until the save commits: exactly as many as it
        # drops, since a relay's claim meanwhile passes locked rows by and would publish newer messages before them.
        taken: list[tuple[tuple[int, str, int], int]] = []

        def oldest(count: int) -> list[tuple[tuple[int, str, int], int]]:
            if count > len(taken):  # read on after the rows already taken: each row is read (and locked) once
                params = {**self._sql.scope, "limit": count - len(taken), "after_seq": taken[-1][0][0] if taken else 0}
                cursor.execute(self._sql.oldest_sizes, params)
                taken.extend(((int(seq), subject, int(size)), int(size)) for seq, subject, size in cursor.fetchall())
            return taken[:count]

        victims = self.limits.make_room(totals.pending, totals.pending_bytes, [len(m.payload) for m in messages],
                                         oldest, exact=not self._sqlite)
        if victims:
            delete_by_seq(cursor, self._sql, MESSAGES, [seq for seq, _, _ in victims])
            mark, head = self._counting.read_marks(cursor)
            changes: Changes = {}
            tally_removed(removed_sums((subject, size, head < seq <= mark, seq <= head)
                                       for seq, subject, size in victims), "dropped", changes)
            self._counting.bump(cursor, changes)
            self._counting.removed_pending(cursor)
            self._note_removed("dropped", len(victims))

    def _get(self, limit: int | None, after: str | None) -> list[Message]:
        with self._tx.cursor("get", write=False) as cursor:
            if after is not None:
                cursor.execute(self._sql.get_after, {**self._sql.scope, "after": to_bytes(after),
                                                     "limit": NO_LIMIT if limit is None else limit})
            elif limit is None:
                cursor.execute(self._sql.get_all, self._sql.scope)
            else:
                cursor.execute(self._sql.get_limit, {**self._sql.scope, "limit": limit})
            rows = cursor.fetchall()
        return [message_from_row(row) for row in rows]

    def _pop(self, now_us: int) -> Message | None:
        if self._sqlite:
            return self._pop_sqlite(now_us)
        return pop_on_server(self._tx, self._sql, self._counting, now_us)

    def _pop_sqlite(self, now_us: int) -> Message | None:
        # The hot path of pop() on sqlite: the steps of Transactions.cursor spelled out, as in _insert (a generator
        # per call costs more than the counters' statement). One read finds the oldest free row, with the marks
        # that say how it is counted and whether it is the newest; it is counted (nothing to write when it is in
        # the head: Counting.popped), then deleted by its seq (see Statements.pop_read).
        params = {**self._sql.scope, "now": now_us}
        message = None
        with self._write_lock:
            conn = self._connections.take("pop")
            try:
                cursor = conn.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(self._sql.pop_read, params)
                row = cursor.fetchone()
                if row is not None:
                    # Verified before its delete: a damaged row raises, and the transaction is rolled back.
                    message = message_from_row(row[1:7])
                    self._counting.popped(cursor, row[0], message.subject, len(message.payload), (row[7], row[9]))
                    cursor.execute(self._sql.delete_seq_at, (row[0],))
                    if row[8]:  # a pop takes the oldest row: rarely also the newest
                        self._counting.removed_pending(cursor)
                conn.commit()
            except BaseException as exc:
                self._tx.failed(conn, exc, "pop")
            self._connections.give_back(conn)
        if message is not None:
            self._space.removed(1)
        return message

    def _claim(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int) -> list[Message]:
        return self._claim_skipping(limit, after, owner, until_us, now_us, frozenset())

    def _claim_skipping(self, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                        skip: frozenset[str]) -> list[Message]:
        if len(skip) > CHUNK:  # more held-back subjects than one statement lists: the contract's generic way
            return super()._claim_skipping(limit, after, owner, until_us, now_us, skip)
        with self._tx.cursor("claim", write=True) as cursor:
            return claim_rows(cursor, self._sql, sqlite=self._sqlite, limit=limit, after=after, owner=owner,
                              until_us=until_us, now_us=now_us, skip=skip)

    def _release(self, message_ids: list[str], owner: str) -> int:
        released = 0
        with self._tx.cursor("release", write=True) as cursor:
            for ids in chunks(message_ids):
                chunk = [to_bytes(message_id) for message_id in ids]
                params = bind(ID_PARAMS, chunk)
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
        return self._remove_ids(message_ids, "discard", kind=kind)

    def _remove_ids(self, message_ids: list[str], where: str, kind: str | None) -> int:
        """Delete these messages in one transaction and count them. ``kind`` (dropped, expired): pending messages
        only, each counted there too; ``None``: pending messages and dead letters, each counted as deleted."""
        removed = 0
        with self._tx.cursor(where, write=True) as cursor:
            changes: Changes = {}
            # sqlite binds a bytearray without the adapter lookup it makes for bytes (see sql_rows.rows_values).
            id_bytes = sqlite_id if self._sqlite else to_bytes
            for ids in chunks(message_ids):
                chunk = [id_bytes(message_id) for message_id in ids]
                pending = remove_rows(cursor, self._sql, MESSAGES, chunk)
                tally_removed(pending, kind or "deleted", changes)
                found = sum(removed[1] for removed in pending)
                dead = (remove_rows(cursor, self._sql, DEAD_LETTERS, chunk)
                        if kind is None and found < len(chunk) else [])
                tally_removed(dead, "deleted", changes, dead=True)
                found += sum(removed[1] for removed in dead)
                if kind is None and found < len(chunk) and not self._sqlite:
                    # A requeue that committed meanwhile moved a dead letter back: the first look missed its new
                    # row (not committed yet), the second waited for its delete. A new statement sees it (READ
                    # COMMITTED). sqlite has one writer at a time: nothing moves between the statements.
                    again = remove_rows(cursor, self._sql, MESSAGES, chunk)
                    tally_removed(again, "deleted", changes)
                    found += sum(removed[1] for removed in again)
                removed += found
            folded = self._counting.fold_outbox_counters(cursor, changes)
            self._counting.bump(cursor, changes, keep=folded)
            if removed:
                self._counting.removed_pending(cursor)
        self._removed(removed)
        return removed

    # ----------------------------------------------------------------------------------------------- outbox

    def _insert_in(self, messages: list[Message], connection: object) -> Any:
        """The outbox (see :meth:`Buffer._insert_in`): :func:`.sql_outbox.insert_in_callers_transaction`."""
        return insert_in_callers_transaction(self, messages, connection)

    # -------------------------------------------------------------------- PostgreSQL: LISTEN for other processes

    def add_listener(self, callback: Callable[[], object]) -> None:
        super().add_listener(callback)
        if self._listens:
            self._listener.start(lambda: self._closed)

    def _count_removed(self, message: Message, kind: str) -> None:
        changes = tally([(message.subject, 0)], kind=kind)
        changes[message.subject].deleted = -1  # _pop counted it as deleted
        with self._tx.cursor("count", write=True) as cursor:
            self._counting.bump(cursor, changes)

    def _stats(self, now_us: int) -> BufferStats:
        with self._tx.cursor("stats", write=False) as cursor:
            cursor.execute(self._sql.totals, self._sql.scope)
            totals = Counts.from_row(cursor.fetchone())
            cursor.execute(self._sql.oldest_created, self._sql.scope)
            oldest = cursor.fetchone()
        age = None if oldest is None else max(0.0, (now_us - int(oldest[0])) / 1e6)
        return totals.buffer_stats(age)

    def _subject_stats(self) -> dict[str, SubjectStats]:
        with self._tx.cursor("stats", write=False) as cursor:
            cursor.execute(self._sql.subject_totals, self._sql.scope)
            return {str(row[0]): Counts.from_row(row[1:]).subject_stats() for row in cursor.fetchall()}

    def _claim_stats(self, window: int, now_us: int) -> ClaimStats:
        with self._tx.cursor("claim_stats", write=False) as cursor:
            cursor.execute(self._sql.claim_stats, {**self._sql.scope, "limit": window, "now": now_us})
            looked_at, held, owners, until = cursor.fetchone()
        return ClaimStats(int(held or 0), int(owners or 0), None if until is None else int(until), int(looked_at))

    def _removed(self, count: int) -> None:
        if self._sqlite and count:
            self._space.removed(count)

    def reclaim(self, *, force: bool = False) -> int:
        """sqlite: give free pages back to the filesystem (the file was made with auto_vacuum=INCREMENTAL).

        Done by itself after large deletes, once at least a quarter of the file (and 4 MiB) is free; ``force``
        reclaims whatever is free now. Runs in short transactions, so savers wait at most one step. Returns how
        many pages were released; 0 on other backends.
        """
        return self._space.reclaim(force=force) if self._sqlite else 0

    def _count(self) -> int:
        with self._tx.cursor("count", write=False) as cursor:
            cursor.execute(self._sql.count, self._sql.scope)
            return int(cursor.fetchone()[0])

    def _mark_dead(self, message_id: str, reason: str, attempts: int, now_us: int) -> bool:
        with self._tx.cursor("mark_dead", write=True) as cursor:
            # Locks the row (server databases), so a concurrent pop and this move cannot both take it.
            cursor.execute(self._sql.lock_pending_id, {**self._sql.scope, "id": to_bytes(message_id)})
            row = cursor.fetchone()
            if row is None:
                return False
            # Not verified: a damaged message must still be movable out of the way.
            cursor.execute(self._sql.insert_dead, {**dict(zip(SEQ_COLUMNS[1:], row[1:], strict=True)),
                                                   "reason": reason, "attempts": attempts, "failed_us": now_us})
            cursor.execute(self._sql.delete_seq, {"seq": row[0]})
            mark, head = self._counting.read_marks(cursor)
            changes = tally([(row[2], len(row[3]))], pending=-1 if head < row[0] <= mark else 0, dead=1)
            if row[0] <= head:  # counted as deleted in advance (sqlite's head): it died instead
                changes[row[2]].deleted -= 1
            self._counting.bump(cursor, changes)
            self._counting.removed_pending(cursor)
            return True

    def _dead_letters(self, limit: int | None) -> list[DeadLetter]:
        with self._tx.cursor("dead_letters", write=False) as cursor:
            if limit is None:
                cursor.execute(self._sql.dead_all, self._sql.scope)
            else:
                cursor.execute(self._sql.dead_limit, {**self._sql.scope, "limit": limit})
            rows = cursor.fetchall()
        return [DeadLetter(message_from_row(row[:6]), row[6], int(row[7]), from_micros(int(row[8]))) for row in rows]

    def _requeue(self, message_id: str) -> bool:
        with self._tx.cursor("requeue", write=True) as cursor:
            cursor.execute(self._sql.lock_dead_id, {**self._sql.scope, "id": to_bytes(message_id)})
            row = cursor.fetchone()
            if row is None:
                return False
            # Inserted anew, the message gets a new seq: the back of the queue. Its id, and so its
            # deduplication by JetStream, is unchanged.
            cursor.execute(self._sql.insert, dict(zip(SEQ_COLUMNS[1:], row[1:], strict=True)))
            cursor.execute(self._sql.delete_dead_seq, {"seq": row[0]})
            # On sqlite the new row is in the uncounted tail (its seq is above the mark).
            self._counting.bump(cursor, tally([(row[2], len(row[3]))], pending=0 if self._lazy else 1, dead=-1))
            return True

    def _close(self) -> None:
        self._listener.stop()
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

