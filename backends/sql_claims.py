"""A relay's claim on the SQL backends: read the oldest claimable rows, mark them claimed, and keep the order.

Each database's read differs in what it can see while it runs, and so in what it must check before the claim
commits (see :func:`claim_rows`): sqlite has one writer at a time, PostgreSQL reads a snapshot, and MariaDB's
locking read sees each row as its scan reaches it.
"""

from __future__ import annotations

from typing import Any

from pbuffer.errors import BackendError
from pbuffer.ids import to_bytes
from pbuffer.message import Message

from .sql_rows import messages_from_seq_rows
from .sql_statements import SEQ_PARAMS, SKIP_PARAMS, Statements, bind, chunks

__all__ = ["claim_rows"]


def claim_rows(cursor: Any, sql: Statements, *, sqlite: bool, limit: int, after: str | None, owner: str,
               until_us: int, now_us: int, skip: frozenset[str]) -> list[Message]:
    """In the claim's write transaction (``cursor``): up to ``limit`` claimable messages in order, behind ``after``
    if given, none on ``skip``'s subjects (at most CHUNK of them), claimed for ``owner`` until ``until_us``."""
    params = {**sql.scope, "now": now_us, "owner": to_bytes(owner), "limit": limit}
    if after is not None:
        params["after"] = to_bytes(after)
    if skip:
        params.update(bind(SKIP_PARAMS, sorted(skip)))
        statement = sql.claim_skipping(len(skip), after is not None)
    else:
        statement = sql.claim if after is None else sql.claim_after
    # Server databases: FOR UPDATE SKIP LOCKED, so competing claimers pass each other's rows by.
    cursor.execute(statement, params)
    rows = cursor.fetchall()
    if after is not None and not sqlite and not sql.by_seq:
        # A late commit: a row older than `after` committed after this owner claimed past its place. A window
        # behind `after` would publish its producer's later messages before it: claim nothing, so the relay
        # starts again from the oldest (sqlite commits in insert order: never late). Checked after the read (each
        # statement sees what committed before it, READ COMMITTED): a producer's rows that committed in time for
        # the read (with or after its older ones) are seen here too. (MariaDB checks after its claims are set,
        # for this and more: see _keep_before_passed.)
        cursor.execute(sql.late_before(len(skip)), params)
        if cursor.fetchall():
            return []
    # Verified before the claim commits: a damaged row raises (the relay dead-letters it) and nothing is claimed.
    messages = messages_from_seq_rows(rows)
    if sqlite:
        if rows:
            cursor.execute(sql.set_claims_range(len(skip)),
                           {**params, "until": until_us, "first": rows[0][0], "last": rows[-1][0]})
            if cursor.rowcount != len(rows):  # never (see set_claims_range): claim nothing rather
                raise BackendError(f"claim: {cursor.rowcount} rows matched the range of the {len(rows)} read; "
                                   "nothing was claimed")
        return messages
    for chunk in chunks(rows):
        claim = bind(SEQ_PARAMS, [row[0] for row in chunk])
        cursor.execute(sql.set_claims(len(chunk)), {**claim, "owner": params["owner"], "until": until_us})
    if rows and sql.by_seq:
        messages = _keep_before_passed(cursor, sql, params, skip, rows, messages)
    return messages


def _keep_before_passed(cursor: Any, sql: Statements, params: dict[str, Any], skip: frozenset[str],
                        rows: list[Any], messages: list[Message]) -> list[Message]:
    """MariaDB/MySQL: the claimed messages older than any free row the claim left behind; the rest are given back.
    Its read locked as it went (FOR UPDATE SKIP LOCKED), seeing each row as it was when the scan got there: a row
    an open transaction held was passed by, and that transaction may have committed, and its producer's next row
    too, before the scan reached the next one, which the claim then took. Such a row, and a late commit older than
    `after` (a row that committed after this owner claimed past its place), is free once the claim's own rows are
    claimed: the window ends before it, and the next claim from the oldest takes it first (PostgreSQL reads a
    snapshot: a row its read passed while uncommitted is not followed by its producer's later rows)."""
    cursor.execute(sql.passed_before(len(skip)), {"after": None, **params, "last": rows[-1][0]})
    found = cursor.fetchone()
    if found is None:
        return messages
    keep = sum(1 for row in rows if row[0] < found[0])
    for chunk in chunks([row[0] for row in rows[keep:]]):
        cursor.execute(sql.unclaim_seqs(len(chunk)), bind(SEQ_PARAMS, chunk))
    return messages[:keep]
