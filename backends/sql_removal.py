"""Deleting a buffer's rows by id, the way each database needs it, and learning what the counters must lose.

Most databases delete by id and return the rows' subjects and sizes in one statement. MariaDB/MySQL take two steps
(see :func:`remove_rows`), so that a delete never waits on a row another transaction holds.
"""

from __future__ import annotations

from typing import Any

from .sql_statements import ID_PARAMS, SEQ_PARAMS, Statements, bind

__all__ = ["remove_rows"]


def remove_rows(cursor: Any, sql: Statements, table: str, ids: list[bytes]) -> list[tuple[str, int, bool]]:
    """Delete the rows with these ids (at most CHUNK) in scope; returns each one's subject, size and whether
    it was in the counters (a pending row above sqlite's mark is not)."""
    if sql.positional:  # sqlite: by position, the scope's subject last
        cursor.execute(sql.delete_ids_at(table, len(ids)), [*ids, *sql.scope.values()])
        return [(subject, int(size), bool(counted)) for subject, size, counted in cursor.fetchall()]
    params = bind(ID_PARAMS, ids)
    params.update(sql.scope)
    if not sql.by_seq:
        cursor.execute(sql.delete_ids(table, len(ids)), params)
        return [(subject, int(size), bool(counted)) for subject, size, counted in cursor.fetchall()]
    # MariaDB/MySQL: a DELETE or locking read by id may scan the primary key (small tables) and then waits on
    # every row it passes that another transaction holds, an open outbox transaction's new row among them.
    # So: find the seqs without locking, then lock and delete exactly those rows by primary key.
    cursor.execute(sql.seqs_of_ids(table, len(ids)), params)
    seqs = bind(SEQ_PARAMS, [row[0] for row in cursor.fetchall()])
    if not seqs:
        return []
    if sql.delete_returning:
        cursor.execute(sql.delete_seqs_returning(table, len(seqs)), seqs)
        return [(subject, int(size), True) for subject, size in cursor.fetchall()]
    cursor.execute(sql.lock_seqs(table, len(seqs)), seqs)
    rows = cursor.fetchall()
    if rows:
        cursor.execute(sql.delete_seqs(table, len(rows)),
                       bind(SEQ_PARAMS, [row[0] for row in rows]))
    return [(subject, int(size), True) for _, subject, size in rows]
