"""Deleting a buffer's rows by id, the way each database needs it, and learning what the counters must lose.

Most databases delete by id and return the rows' subjects and sizes in one statement. MariaDB/MySQL take two steps
(see :func:`remove_rows`), so that a delete never waits on a row another transaction holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .counters import Removed, removed_sums
from .sql_statements import ID_PARAMS, SEQ_PARAMS, Statements, bind, chunks

__all__ = ["delete_by_seq", "remove_rows"]


def remove_rows(cursor: Any, sql: Statements, table: str, ids: Sequence[bytes | bytearray]) -> list[Removed]:
    """Delete the rows with these ids (at most CHUNK) in scope; returns what went, summed by subject: rows, bytes,
    how many were in the counters' pending (a row above sqlite's mark is not, nor one in its head) and how many in
    sqlite's head, see :data:`.counters.Removed`."""
    if sql.positional:
        # sqlite: the sums read first, then a DELETE that returns nothing, in the same write transaction (no other
        # writer between them), the ids bound by position and the scope's subject last. A DELETE ... RETURNING
        # of a window's rows cost 1.9 us a row in sqlite and 0.8 without RETURNING; the read of the sums 0.75
        # (measured), and the Python per row (a tuple each, then their tally) is gone with it.
        params = [*ids, *sql.scope.values()]
        cursor.execute(sql.removed_sums_at(table, len(ids)), params)
        sums = cursor.fetchall()
        if sums:
            cursor.execute(sql.delete_ids_plain_at(table, len(ids)), params)
        return [(subject, int(rows), int(size), int(counted), int(counted_size), int(head), int(head_size))
                for subject, rows, size, counted, counted_size, head, head_size in sums]
    return removed_sums((subject, size, counted, False) for subject, size, counted in _remove_each(cursor, sql, table,
                                                                                                   ids))


def _remove_each(cursor: Any, sql: Statements, table: str,
                 ids: Sequence[bytes | bytearray]) -> list[tuple[str, int, bool]]:
    """Server databases: :func:`remove_rows` row by row, each row's subject, size and whether it was counted
    (servers count every row, and have no head)."""
    params = bind(ID_PARAMS, ids)
    params.update(sql.scope)
    if not sql.by_seq:
        cursor.execute(sql.delete_ids(table, len(ids)), params)
        return [(subject, int(size), bool(counted)) for subject, size, counted in cursor.fetchall()]
    # MariaDB/MySQL: a DELETE or locking read by id may scan the primary key (small tables) and then waits on
    # every row it passes that another transaction holds, an open outbox transaction's new row among them.
    # So: find the seqs without locking, then lock and delete exactly those rows by primary key.
    cursor.execute(sql.seqs_of_ids(table, len(ids)), params)
    found = [int(row[0]) for row in cursor.fetchall()]
    if not found:
        return []
    if sql.point_statements:
        return [(subject, int(size), True) for subject, size in _delete_each(cursor, sql, table, found)]
    seqs = bind(SEQ_PARAMS, found)
    if sql.delete_returning:
        cursor.execute(sql.delete_seqs_returning(table, len(seqs)), seqs)
        return [(subject, int(size), True) for subject, size in cursor.fetchall()]
    cursor.execute(sql.lock_seqs(table, len(seqs)), seqs)
    rows = cursor.fetchall()
    if rows:
        cursor.execute(sql.delete_seqs(table, len(rows)),
                       bind(SEQ_PARAMS, [row[0] for row in rows]))
    return [(subject, int(size), True) for _, subject, size in rows]


def delete_by_seq(cursor: Any, sql: Statements, table: str, seqs: list[int]) -> None:
    """Delete the rows with these seqs (already locked by this transaction, or gone), on pbuffer's own connection.
    MariaDB/MySQL: a statement per row, never one over many (see :func:`_delete_each`), together in one round
    trip."""
    if not sql.by_seq:
        for chunk in chunks(seqs):
            cursor.execute(sql.delete_seqs(table, len(chunk)), bind(SEQ_PARAMS, chunk))
    elif sql.point_statements:
        _delete_each(cursor, sql, table, seqs)
    else:
        for seq in seqs:
            cursor.execute(sql.delete_one(table), {"seq": seq})


def _delete_each(cursor: Any, sql: Statements, table: str, seqs: list[int]) -> list[tuple[str, int]]:
    """Delete the rows with these seqs reaching each by its primary key, in one round trip per chunk, returning
    each deleted row's subject and size: even an IN list of primary keys is read by a full scan when the table is
    small (a relay that keeps up), and that scan waits on every row another transaction holds, an open outbox
    transaction's new row among them. MariaDB: the list as a table joined to the rows (Statements.delete_listed);
    MySQL: one statement per row (delete_each_seq)."""
    removed: list[tuple[str, int]] = []
    # MariaDB: two statements for the list (delete_listed); for a single row one DELETE ... RETURNING by primary
    # key costs less (mariadb.delete: 504-656 msg/s that way, 462-565 with the two, 3 paired quick runs).
    if sql.delete_returning and len(seqs) > 1:
        for chunk in chunks(list(dict.fromkeys(seqs))):
            cursor.execute(sql.delete_listed(table), {"seqs": json.dumps(chunk)})
            removed.extend((subject, int(size)) for subject, size in cursor.fetchall())
            while cursor.nextset():  # the DELETE's count: every result read, for the next statement
                pass
        return removed
    for chunk in chunks(seqs):
        cursor.execute(sql.delete_each_seq(table, chunk))
        removed.extend((subject, int(size)) for subject, size in cursor.fetchall())
        while cursor.nextset():
            removed.extend((subject, int(size)) for subject, size in cursor.fetchall())
    return removed
