"""The fixed SQL the SQL backend runs, compiled once per dialect and buffer scope, and the one way it binds lists
of values: ``IN (...)`` statements of at most :data:`CHUNK` parameters, built once per count and cached.

Table and column names are constants (:mod:`.tables`, :mod:`.sql_rows`): nothing from a caller is ever spliced into
the SQL text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from .sql_rows import COLUMNS, DEAD_COLUMNS
from .tables import COUNTED, COUNTER_COLUMNS, COUNTERS, DEAD_LETTERS, MESSAGES

__all__ = ["CHUNK", "ID_PARAMS", "NO_LIMIT", "SEQ_PARAMS", "SHARDS", "SKIP_PARAMS", "Statements", "bind", "chunks"]

#: Values per ``IN (...)``: well under every backend's limit on bound parameters.
CHUNK = 500
#: The parameter names of an ``IN (...)`` list, by what it lists: ids, seqs, skipped subjects.
ID_PARAMS = [f"id{i}" for i in range(CHUNK)]
SEQ_PARAMS = [f"s{i}" for i in range(CHUNK)]
SKIP_PARAMS = [f"k{i}" for i in range(CHUNK)]
#: LIMIT for "all" that every backend accepts (sqlite's -1 and PostgreSQL's NULL are not portable).
NO_LIMIT = 2**62
#: Counter rows per subject that server databases spread concurrent writers over (sqlite has one writer: shard 0).
SHARDS = 16

_T = TypeVar("_T")


def sizes_where(where: str) -> str:
    """sqlite: the subject and payload size of the pending rows matching ``where``, as a subquery to sum by subject.

    Its LIMIT keeps sqlite from flattening it into the grouping query, which sorts the rows it groups with the
    arguments of its aggregates: ``SUM(LENGTH(payload))`` grouped by subject read every payload whole (50 ms for
    400 rows of 64 KiB, against 0.2 ms this way, which reads only each row's header; measured, sqlite 3.40)."""
    return f"(SELECT subject, LENGTH(payload) AS size FROM {MESSAGES} WHERE {where} LIMIT -1) sized"


def chunks(values: Sequence[_T]) -> Iterator[Sequence[_T]]:
    """``values`` in runs of at most :data:`CHUNK`: one ``IN (...)`` statement each."""
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def bind(names: list[str], values: Iterator[Any] | Sequence[Any]) -> dict[str, Any]:
    """An ``IN (...)`` list's parameters: ``values`` (at most :data:`CHUNK`) under ``names`` (``ID_PARAMS``...)."""
    return dict(zip(names, values, strict=False))


class Statements:
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

        #: Each compiled statement's dialect-neutral SQL: the outbox runs it on a caller's connection (CallerCursor).
        self.raw: dict[str, str] = {}

        def compile_(sql: str) -> str:
            compiled = sql if sqlite else str(sa.text(sql).compile(dialect=dialect))
            self.raw[compiled] = sql
            return compiled

        self._compile = compile_
        self._and_scope = and_scope
        self._by_count: dict[tuple[str, int], str] = {}

        values = ", ".join(f":{column}" for column in COLUMNS.split(", "))
        self.insert = compile_(f"INSERT INTO {MESSAGES} ({COLUMNS}) VALUES ({values})")
        # What save() runs: positional on sqlite (see sql_rows.rows_values), named elsewhere (see row_params); on
        # sqlite without the headers column for messages that have none (binding a NULL costs an adapter lookup).
        self.insert_row, self.insert_bare = (
            (f"INSERT INTO {MESSAGES} ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
             f"INSERT INTO {MESSAGES} (id, subject, payload, created_us, checksum) VALUES (?, ?, ?, ?, ?)")
            if sqlite else (self.insert, self.insert))
        self.insert_dead = compile_(f"INSERT INTO {DEAD_LETTERS} ({COLUMNS}, reason, attempts, failed_us) "
                                    f"VALUES ({values}, :reason, :attempts, :failed_us)")
        self.get_all = compile_(f"SELECT {COLUMNS} FROM {MESSAGES}{where} ORDER BY seq")
        self.get_limit = compile_(f"SELECT {COLUMNS} FROM {MESSAGES}{where} ORDER BY seq LIMIT :limit")
        # seq values start at 1, so 0 means "from the oldest" when `after` is not pending.
        after_seq = f"COALESCE((SELECT seq FROM {MESSAGES} WHERE id = :after), 0)"
        self.get_after = compile_(f"SELECT {COLUMNS} FROM {MESSAGES} WHERE seq > {after_seq}{and_scope} "
                                  "ORDER BY seq LIMIT :limit")
        self.count = compile_(f"SELECT count(*) FROM {MESSAGES}{where}")
        self.delete_seq = compile_(f"DELETE FROM {MESSAGES} WHERE seq = :seq")
        self.delete_dead_seq = compile_(f"DELETE FROM {DEAD_LETTERS} WHERE seq = :seq")
        self.lock_pending_id = compile_(f"SELECT seq, {COLUMNS} FROM {MESSAGES} WHERE id = :id{and_scope}"
                                        f"{for_update}")
        self.lock_dead_id = compile_(f"SELECT seq, {COLUMNS} FROM {DEAD_LETTERS} WHERE id = :id{and_scope}"
                                     f"{for_update}")
        self.dead_all = compile_(f"SELECT {DEAD_COLUMNS} FROM {DEAD_LETTERS}{where} ORDER BY seq")
        self.dead_limit = compile_(f"SELECT {DEAD_COLUMNS} FROM {DEAD_LETTERS}{where} ORDER BY seq "
                                   "LIMIT :limit")
        # A message is free to claim or pop when nobody claimed it, or the claim's lease ran out.
        free = "(claim_until_us IS NULL OR claim_until_us < :now)"
        self._pop_statements(compile_, sqlite, dialect.name, free, and_scope, skip_locked)
        # MariaDB: the oldest free row nobody holds, below :before (the first time: NO_LIMIT; then below the row
        # the first read holds, for one its scan passed while held: see passed_before).
        self.pop_lock = compile_(f"SELECT seq, {COLUMNS} FROM {MESSAGES} WHERE seq < :before AND {free}{and_scope} "
                                 f"ORDER BY seq LIMIT 1{skip_locked}")
        claimable = "(claim_until_us IS NULL OR claim_until_us < :now OR claim_owner = :owner)"
        self.claim = compile_(f"SELECT seq, {COLUMNS} FROM {MESSAGES} WHERE {claimable}{and_scope} ORDER BY seq "
                              f"LIMIT :limit{skip_locked}")
        self.claim_after = compile_(f"SELECT seq, {COLUMNS} FROM {MESSAGES} WHERE seq > {after_seq} AND "
                                    f"{claimable}{and_scope} ORDER BY seq LIMIT :limit{skip_locked}")
        self._claim_parts = (claimable, and_scope, after_seq, skip_locked)
        self._counter_statements(dialect.name, compile_, where, and_scope)
        # The head of the queue, where relays claim: an index range of :limit rows.
        self.claim_stats = compile_(
            "SELECT COUNT(*), SUM(CASE WHEN claim_until_us >= :now THEN 1 ELSE 0 END), COUNT(DISTINCT CASE WHEN "
            "claim_until_us >= :now THEN claim_owner END), MAX(CASE WHEN claim_until_us >= :now THEN claim_until_us "
            f"END) FROM (SELECT claim_owner, claim_until_us FROM {MESSAGES}{where} ORDER BY seq LIMIT :limit) head")
        self.oldest_created = compile_(f"SELECT created_us FROM {MESSAGES}{where} ORDER BY seq LIMIT 1")
        # drop_oldest's candidates, read on from :after_seq (the rows already taken); rows an outbox save holds
        # deleted until its caller commits are passed over, not waited for.
        self.oldest_sizes = compile_(f"SELECT seq, subject, length(payload) FROM {MESSAGES} WHERE seq > :after_seq"
                                     f"{and_scope} ORDER BY seq LIMIT :limit{skip_locked}")
        # The row that writers enforcing limits on a server database take turns on (revision 0002 made it).
        self.limit_lock = compile_(f"SELECT shard FROM {COUNTERS} WHERE subject = '' AND shard = -1 FOR UPDATE")
        self.delete_returning = bool(dialect.delete_returning)
        # MariaDB/MySQL remove rows by id in two steps (see sql_removal.remove_rows), and bound every UPDATE or
        # DELETE of listed rows with LIMIT: without it the optimizer may scan a small table whole, and a scanning
        # DELETE waits on each row another transaction holds (an open outbox transaction's new row, say).
        self.by_seq = dialect.name in ("mysql", "mariadb")
        # positional (sqlite): a relay's delete binds its IN lists by position (removed_sums_at; its claim binds a
        # seq range, set_claims_range): binding 500 named parameters cost 1.2 us a row, by position 0.45 (measured).
        # point_statements (MariaDB/MySQL through PyMySQL): the connections take several statements in one round
        # trip (see database.py), so a relay's delete is one primary-key statement per row, sent together.
        self._for_update, self.positional, self.point_statements = (
            for_update, sqlite, self.by_seq and dialect.driver == "pymysql")

    def _pop_statements(self, compile_: Callable[[str], str], sqlite: bool, dialect: str, free: str, and_scope: str,
                        skip_locked: str) -> None:
        # DELETE ... RETURNING pops in one statement on PostgreSQL; MariaDB locks, then deletes (pop_lock).
        self.pop_returning = dialect == "postgresql"
        oldest = f"SELECT seq FROM {MESSAGES} WHERE {free}{and_scope} ORDER BY seq LIMIT 1{skip_locked}"
        # With its transaction's id: a pop whose COMMIT got no answer asks txid_status() what became of it.
        self.pop = compile_(f"DELETE FROM {MESSAGES} WHERE seq = ({oldest}) RETURNING {COLUMNS}, txid_current()"
                            ) if self.pop_returning else ""
        self.commit_status = compile_("SELECT txid_status(:xid)") if self.pop_returning else ""
        # sqlite counts lazily: a removal must know whether a row was in the counters' pending (its seq at or below
        # the mark and above the head) or in the head (at or below head_to_seq: counted as deleted in advance).
        self._counted_flag = (f"seq > (SELECT head_to_seq FROM {COUNTED}) AND seq <= (SELECT up_to_seq FROM {COUNTED})"
                              if sqlite else "1")
        self._head_flag = f"seq <= (SELECT head_to_seq FROM {COUNTED})" if sqlite else "0"
        # sqlite pops with a read of the oldest free row, then a DELETE of its seq, in the write transaction (one
        # writer: nothing changes between them): a DELETE ... RETURNING of one row cost 1.3 us more a pop (20 us
        # against 18.7, measured; sqlite keeps RETURNING's rows in a table of their own). The read also gives the
        # two marks (the row is counted at or below up_to_seq, counted in advance at or below head_to_seq: see
        # Counting.popped) and whether it is the newest (only then must the marks come down: see
        # Counting.removed_pending).
        newest_flag = f"NOT EXISTS (SELECT 1 FROM {MESSAGES} AS later WHERE later.seq > {MESSAGES}.seq)"
        self.pop_read = compile_(f"SELECT seq, {COLUMNS}, (SELECT up_to_seq FROM {COUNTED}), {newest_flag}, "
                                 f"(SELECT head_to_seq FROM {COUNTED}) FROM {MESSAGES} "
                                 f"WHERE {free}{and_scope} ORDER BY seq LIMIT 1") if sqlite else ""
        self.delete_seq_at = f"DELETE FROM {MESSAGES} WHERE seq = ?"

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
        # The outbox's own counters rows (shard SHARDS and up), folded back by relays' deletes (server databases).
        skip_locked = "" if dialect == "sqlite" else " FOR UPDATE SKIP LOCKED"
        self.outbox_counters = compile_(f"SELECT subject, shard, {', '.join(COUNTER_COLUMNS)} FROM {COUNTERS} "
                                        f"WHERE shard >= {SHARDS} LIMIT :limit{skip_locked}")
        self.delete_counter = compile_(f"DELETE FROM {COUNTERS} WHERE subject = :subject AND shard = :shard")
        sums = ", ".join(f"COALESCE(SUM({c}), 0) AS {c}" for c in COUNTER_COLUMNS)
        totals = f"SELECT {sums} FROM {COUNTERS}{where}"
        # shard -1 is no subject's: the lock row that writers enforcing limits take on servers (revision 0002).
        rows = f"SELECT subject, {', '.join(COUNTER_COLUMNS)} FROM {COUNTERS} WHERE shard >= 0{and_scope}"
        if dialect == "sqlite":
            # The counters plus the uncounted tail, and the head's rows moved back from deleted to pending (see
            # Counting.popped), each in one statement: one consistent snapshot, no transaction.
            tail = f"FROM {MESSAGES} WHERE seq > (SELECT up_to_seq FROM {COUNTED}){and_scope}"
            head = f"FROM {MESSAGES} WHERE seq <= (SELECT head_to_seq FROM {COUNTED}){and_scope}"
            sizes = "SELECT COUNT(*) AS pending, COALESCE(SUM(LENGTH(payload)), 0) AS pending_bytes"
            totals = (f"SELECT c.pending + t.pending + h.pending, c.pending_bytes + t.pending_bytes + h.pending_bytes, "
                      f"c.dead, c.dead_bytes, c.dropped, c.expired, c.deleted - h.pending FROM ({totals}) c, "
                      f"({sizes} {tail}) t, ({sizes} {head}) h")
            rows = (f"{rows} UNION ALL SELECT subject, 1, LENGTH(payload), 0, 0, 0, 0, 0 {tail} "
                    f"UNION ALL SELECT subject, 1, LENGTH(payload), 0, 0, 0, 0, -1 {head}")
        self.totals = compile_(totals)
        self.subject_totals = compile_("SELECT subject, " + ", ".join(f"SUM({c})" for c in COUNTER_COLUMNS) +
                                       f" FROM ({rows}) counted GROUP BY subject")
        # sqlite's lazy count (see Counting.maybe_fold): fold the tail in, move the mark to the newest row.
        self.touch = (f"INSERT INTO {COUNTERS} (subject, shard, {', '.join(COUNTER_COLUMNS)}) VALUES (:subject, 0"
                      f"{', 0' * len(COUNTER_COLUMNS)}) ON CONFLICT (subject, shard) DO NOTHING")
        self.newest_seq = f"SELECT MAX(seq) FROM {MESSAGES}"
        # A pop on sqlite outside the head (Counting.popped): the subject's row exists once a fold or a delete made
        # it, so a plain UPDATE. A counted row (its seq at or below the mark) also leaves pending.
        self.pop_counted = (f"UPDATE {COUNTERS} SET pending = pending - 1, pending_bytes = pending_bytes - :size, "
                            "deleted = deleted + 1 WHERE subject = :subject AND shard = 0")
        self.pop_uncounted = f"UPDATE {COUNTERS} SET deleted = deleted + 1 WHERE subject = :subject AND shard = 0"
        self.fold = (f"INSERT INTO {COUNTERS} (subject, shard, pending, pending_bytes, dead, dead_bytes, dropped, "
                     f"expired) SELECT subject, 0, COUNT(*), SUM(size), 0, 0, 0, 0 FROM "
                     f"{sizes_where(f'seq > (SELECT up_to_seq FROM {COUNTED})')} WHERE true GROUP BY subject "
                     "ON CONFLICT (subject, shard) DO UPDATE SET pending = pending + excluded.pending, "
                     "pending_bytes = pending_bytes + excluded.pending_bytes")
        self.move_mark = (f"UPDATE {COUNTED} SET up_to_seq = (SELECT COALESCE(MAX(seq), 0) FROM {MESSAGES}) "
                          "RETURNING up_to_seq")
        newest = f"(SELECT COALESCE(MAX(seq), 0) FROM {MESSAGES})"
        # Both marks come down to the newest row left (the head is never above the counted mark).
        self.lower_mark = (f"UPDATE {COUNTED} SET up_to_seq = {newest}, head_to_seq = MIN(head_to_seq, {newest}) "
                           f"WHERE up_to_seq > {newest}")
        # The head (Counting.popped): the marks; whether the head still holds rows (the oldest row's seq) and the
        # end of the next :limit counted rows past it; the rows a move takes in (every subject's, whatever the
        # buffer's scope: the marks are the file's); its new end. Named parameters: the outbox runs what the limits
        # need through text() on the caller's connection (CallerCursor).
        self.marks = f"SELECT up_to_seq, head_to_seq FROM {COUNTED}"
        self.head_ahead = (f"SELECT (SELECT MIN(seq) FROM {MESSAGES}), (SELECT MAX(seq) FROM (SELECT seq FROM "
                           f"{MESSAGES} WHERE seq > :head AND seq <= :counted ORDER BY seq LIMIT :limit) ahead)")
        self.head_sums = (f"SELECT subject, COUNT(*), SUM(size) FROM {sizes_where('seq > :low AND seq <= :high')} "
                          "GROUP BY subject")
        self.set_head = f"UPDATE {COUNTED} SET head_to_seq = :head"
        # An outbox save on sqlite whose limits read the counters takes the write lock first: pysqlite begins the
        # caller's transaction at its first write, and reads before it would see a moment that is gone by the
        # write (another process's pop or delete in between). A write that matches nothing begins it.
        self.begin_writing = f"UPDATE {COUNTED} SET up_to_seq = up_to_seq WHERE 0 = 1"

    def _in_list(self, key: str, count: int, build: Callable[[str], str], prefix: str = "id") -> str:
        sql = self._by_count.get((key, count))
        if sql is None:
            placeholders = ", ".join(f":{prefix}{i}" for i in range(count))
            sql = self._by_count[(key, count)] = self._compile(build(placeholders))
        return sql

    def _in_list_at(self, key: str, count: int, build: Callable[[str], str]) -> str:
        """sqlite only: an ``IN (...)`` statement whose parameters are all ``?``, bound by position."""
        sql = self._by_count.get((key, count))
        if sql is None:
            assert self.positional
            sql = self._by_count[(key, count)] = build(", ".join("?" * count))
        return sql

    def removed_sums_at(self, table: str, count: int) -> str:
        """sqlite: what deleting these ids in scope removes, summed by subject (:data:`.counters.Removed`): read
        before :meth:`delete_ids_plain_at`, in the same write transaction."""
        counted, head = (self._counted_flag, self._head_flag) if table == MESSAGES else ("1", "0")
        scope = " AND subject = ?" if self._and_scope else ""
        return self._in_list_at(f"removed sums {table}", count, lambda ids: (
            "SELECT subject, count(*), sum(size), sum(counted), sum(CASE WHEN counted THEN size ELSE 0 END), "
            "sum(head), sum(CASE WHEN head THEN size ELSE 0 END) FROM (SELECT subject, length(payload) AS size, "
            f"{counted} AS counted, {head} AS head FROM {table} WHERE id IN ({ids}){scope} LIMIT -1) removed "
            "GROUP BY subject"))

    def delete_ids_plain_at(self, table: str, count: int) -> str:
        """sqlite: delete rows by id in scope, returning nothing (see :meth:`removed_sums_at`)."""
        scope = " AND subject = ?" if self._and_scope else ""
        return self._in_list_at(f"delete plain {table}", count, lambda ids: (
            f"DELETE FROM {table} WHERE id IN ({ids}){scope}"))

    def delete_ids(self, table: str, count: int) -> str:
        """Delete rows by id in scope, returning each one's subject and payload size."""
        counted = self._counted_flag if table == MESSAGES else "1"
        return self._in_list(f"delete {table}", count, lambda ids: (
            f"DELETE FROM {table} WHERE id IN ({ids}){self._and_scope} RETURNING subject, length(payload), "
            f"{counted}"))

    def seqs_of_ids(self, table: str, count: int) -> str:
        """MariaDB/MySQL: the seqs of rows with these ids in scope, read without locking (see remove_rows)."""
        return self._in_list(f"seqs {table}", count, lambda ids: (
            f"SELECT seq FROM {table} WHERE id IN ({ids}){self._and_scope}"))

    def _limit(self, count: int) -> str:
        return f" LIMIT {int(count)}" if self.by_seq else ""

    def delete_seqs_returning(self, table: str, count: int) -> str:
        return self._in_list(f"delete seq returning {table}", count, lambda seqs: (
            f"DELETE FROM {table} WHERE seq IN ({seqs}){self._limit(count)} RETURNING subject, length(payload)"),
            prefix="s")

    def delete_one(self, table: str) -> str:
        """Delete one row of ``table`` by its seq (``:seq``)."""
        return self.delete_seq if table == MESSAGES else self.delete_dead_seq

    def delete_each_seq(self, table: str, seqs: Sequence[int]) -> str:
        """Several statements in one (``point_statements``): per seq, delete that one row by primary key and say
        its subject and size (MariaDB: ``DELETE ... RETURNING``; MySQL: a locking read, then the delete). A point
        statement touches its own row only: an IN list or a range may scan a small table whole and wait on every
        row another transaction holds, an open outbox transaction's new row among them. The seqs are integers
        read from the table, written in as such."""
        if self.delete_returning:
            return "; ".join(f"DELETE FROM {table} WHERE seq = {int(seq)} RETURNING subject, length(payload)"
                             for seq in seqs)
        return "; ".join(f"SELECT subject, length(payload) FROM {table} WHERE seq = {int(seq)} FOR UPDATE; "
                         f"DELETE FROM {table} WHERE seq = {int(seq)}" for seq in seqs)

    def delete_listed(self, table: str) -> str:
        """MariaDB (:meth:`delete_each_seq`'s fast form): the rows whose seqs the JSON array ``:seqs`` lists, locked
        and read (subject, size), then deleted: two statements, one round trip. Each reads the array as a table
        (``JSON_TABLE``) and joins ``table`` to it, that table first (``STRAIGHT_JOIN``) and by the primary key
        (``FORCE INDEX``: without it the locking read of a small table joined by a full scan), so every row of
        ``table`` is reached by its primary key (``eq_ref``) and no other row is read or waited for. A plain ``IN``
        list is read by a full scan when the table is small; a statement per row cost the server about three times
        as much (``mariadb.delete_many``: 7,774-10,257 msg/s that way, 23,237-25,202 this way, 3 paired quick runs)."""
        sql = self._by_count.get((f"listed {table}", 0))
        if sql is None:
            rows = (f"JSON_TABLE(:seqs, '$[*]' COLUMNS (seq BIGINT PATH '$')) AS k STRAIGHT_JOIN {table} AS m "
                    "FORCE INDEX (PRIMARY) ON m.seq = k.seq")
            sql = self._by_count[(f"listed {table}", 0)] = self._compile(
                f"SELECT m.subject, LENGTH(m.payload) FROM {rows} FOR UPDATE; DELETE m FROM {rows}")
        return sql

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
            f"SELECT seq, {COLUMNS} FROM {MESSAGES} WHERE {behind}{claimable}{and_scope} "
            f"AND subject NOT IN ({subjects}) ORDER BY seq LIMIT :limit{skip_locked}"), prefix="k")

    def late_before(self, skipping: int) -> str:
        """PostgreSQL: a row if ``:after`` is claimed by ``:owner`` and an older row in scope (not on a skipped
        subject, params ``k0``...) is free: one that committed after this owner claimed past it
        (sql_claims.claim_rows). MariaDB/MySQL use :meth:`passed_before`."""
        return self._in_list("late", skipping, lambda subjects: (
            f"SELECT 1 FROM {MESSAGES} a WHERE a.id = :after AND a.claim_owner = :owner AND EXISTS (SELECT 1 FROM "
            f"{MESSAGES} m WHERE m.seq < a.seq AND {self._free_m(subjects if skipping else None)})"), prefix="k")

    def _free_m(self, skipped: str | None) -> str:
        """The condition on a row ``m`` of :data:`MESSAGES` for the claim checks: free (no live claim), in scope,
        and not on a skipped subject (``skipped``: the ``k0``... placeholders, or ``None``)."""
        scope = " AND m.subject = :subject" if self._and_scope else ""
        skipping = f" AND m.subject NOT IN ({skipped})" if skipped else ""
        return f"(m.claim_until_us IS NULL OR m.claim_until_us < :now){scope}{skipping}"

    def passed_before(self, skipping: int) -> str:
        """MariaDB/MySQL, after a claim set its claims: the oldest free row in scope (not on a skipped subject,
        params ``k0``...) older than ``:last``, the claim's newest row, that nobody holds now. A locking read sees
        each row as it is when its scan gets there, not a snapshot: a row its scan passed while an open transaction
        held it can have committed, and a younger row of the same producer committed, before the scan reached
        that one (sql_claims.claim_rows). Rows others hold are passed over here too (a competing relay's
        claim in progress); the claim's own rows are no longer free. Rows older than ``:after`` count only while
        ``:owner`` holds it (``:after`` may be NULL): the contract's generic skipping claim
        (``claim_skipping_by_release``) gives back what it passes over and claims on behind it."""
        given_back = (f"COALESCE((SELECT a.seq FROM {MESSAGES} a WHERE a.id = :after AND (a.claim_owner IS NULL OR "
                      "a.claim_owner <> :owner)), 0)")
        return self._in_list("passed", skipping, lambda subjects: (
            f"SELECT m.seq FROM {MESSAGES} m WHERE m.seq < :last AND m.seq > {given_back} AND "
            f"{self._free_m(subjects if skipping else None)} ORDER BY m.seq LIMIT 1 FOR UPDATE SKIP LOCKED"),
            prefix="k")

    def unclaim_seqs(self, count: int) -> str:
        """Give back rows a claim set and then did not keep (see :meth:`passed_before`), by primary key."""
        return self._in_list("unclaim", count, lambda seqs: (
            f"UPDATE {MESSAGES} SET claim_owner = NULL, claim_until_us = NULL WHERE seq IN ({seqs})"
            f"{self._limit(count)}"), prefix="s")

    def set_claims(self, count: int) -> str:
        return self._in_list("claim", count, lambda seqs: (
            f"UPDATE {MESSAGES} SET claim_owner = :owner, claim_until_us = :until WHERE seq IN ({seqs})"
            f"{self._limit(count)}"), prefix="s")

    def set_claims_range(self, skipping: int) -> str:
        """sqlite: the claim's UPDATE by the seq range of the rows it read (params ``first``, ``last``, the
        claim's own, and ``until``), instead of an IN list of every seq. In the claim's write transaction the rows
        from ``first`` to ``last`` that meet the claim's condition are exactly the rows it read: it read the lowest
        such seqs in order, and nothing else writes until it commits."""
        claimable, and_scope, _, _ = self._claim_parts
        return self._in_list("claim range", skipping, lambda subjects: (
            f"UPDATE {MESSAGES} SET claim_owner = :owner, claim_until_us = :until WHERE seq BETWEEN :first AND :last "
            f"AND {claimable}{and_scope}" + (f" AND subject NOT IN ({subjects})" if skipping else "")), prefix="k")

    def release(self, count: int) -> str:
        return self._in_list("release", count, lambda ids: (
            f"UPDATE {MESSAGES} SET claim_owner = NULL, claim_until_us = NULL WHERE id IN ({ids}) "
            f"AND claim_owner = :owner{self._limit(count)}"))
