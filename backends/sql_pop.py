"""pop() on PostgreSQL and MariaDB, and what became of a PostgreSQL pop whose COMMIT got no answer."""

from __future__ import annotations

import time

from pbuffer.errors import BackendError, CommitUnknownError, PBufferError
from pbuffer.message import Message

from .counters import Counts
from .sql_connections import Transactions
from .sql_counting import Counting
from .sql_rows import message_from_row
from .sql_statements import NO_LIMIT, Statements

__all__ = ["pop_on_server"]

#: How long a pop whose COMMIT got no answer waits for the server to settle its transaction (a server notices a
#: dropped connection and rolls back what never got its COMMIT).
_SETTLE_SECONDS = 5.0


def pop_on_server(tx: Transactions, sql: Statements, counting: Counting, now_us: int) -> Message | None:
    """Remove and return the oldest free pending message in one transaction (server databases).

    The connection can fail after the COMMIT went out: the pop may then have removed its message, which would
    reach no caller. On PostgreSQL the transaction's id came back with the row, and ``txid_status()`` says what
    became of it: committed, the message is returned; rolled back, nothing was popped. MariaDB has no such
    question: :class:`~pbuffer.CommitUnknownError`.
    """
    params = {**sql.scope, "now": now_us}
    message: Message | None = None
    xid: int | None = None
    try:
        with tx.cursor("pop", write=True) as cursor:
            if sql.pop_returning:
                cursor.execute(sql.pop, params)
                row = cursor.fetchone()
                xid = None if row is None else int(row[6])
            else:
                cursor.execute(sql.pop_lock, {**params, "before": NO_LIMIT})
                found = cursor.fetchone()
                if found:
                    # A locking read sees each row as it is when its scan gets there: a row it passed while an
                    # open transaction held it may since have committed, its producer's next row too (the one
                    # found). The oldest free row nobody holds now is the one to pop.
                    cursor.execute(sql.pop_lock, {**params, "before": found[0]})
                    found = cursor.fetchone() or found
                row = found[1:] if found else None
                if found:
                    cursor.execute(sql.delete_seq, {"seq": found[0]})
            # Verified inside the transaction: a damaged row raises and its delete is rolled back.
            message = None if row is None else message_from_row(row[:6])
            if message is not None:
                counting.bump(cursor, {message.subject: Counts(-1, -len(message.payload), deleted=1)})
    except CommitUnknownError as exc:
        if xid is None or message is None:
            raise
        status = _settled(tx, sql, xid)
        if status == "aborted":
            raise BackendError(f"pop: the connection failed while it committed, and the server rolled the pop "
                               f"back: nothing was popped ({exc.__cause__!r})") from exc
        if status != "committed":
            raise
    return message


def _settled(tx: Transactions, sql: Statements, xid: int) -> str | None:
    """PostgreSQL's word on transaction ``xid`` once it is no longer running: ``"committed"`` or ``"aborted"``;
    ``None`` if it cannot be had within _SETTLE_SECONDS."""
    deadline = time.monotonic() + _SETTLE_SECONDS
    while True:
        try:
            with tx.cursor("pop", write=False) as cursor:
                cursor.execute(sql.commit_status, {"xid": xid})
                status = cursor.fetchone()[0]
        except PBufferError:
            return None
        if status in ("committed", "aborted") or time.monotonic() > deadline:
            return status if status in ("committed", "aborted") else None
        time.sleep(0.05)
