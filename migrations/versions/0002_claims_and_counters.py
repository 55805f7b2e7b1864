"""Revision 2: claims for competing relays, and counters kept up to date for stats() and limits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

- ``pbuffer_messages`` gains ``claim_owner`` and ``claim_until_us``: a relay claims a window of messages for a
  lease before publishing them, so competing relays never publish the same message while the lease lives. Both
  are NULL for an unclaimed message; no index (claimed rows sit at the head of the queue, where a claim looks).
- ``pbuffer_counters`` holds, per subject and shard, the pending and dead counts and bytes and the dropped and
  expired totals, changed in the same transaction as the rows they count. Server databases spread writers over
  shards so concurrent transactions do not queue on one counter row; sqlite uses shard 0 only. The row
  (subject '', shard -1) is a lock that writers enforcing limits on a server database take first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Every schema object a sqlite file holds at this revision, checked at open (anything else is refused).
SQLITE_OBJECTS: frozenset[tuple[str, str]] = frozenset({
    ("table", "pbuffer_alembic_version"),
    ("index", "sqlite_autoindex_pbuffer_alembic_version_1"),
    ("table", "pbuffer_messages"),
    ("index", "sqlite_autoindex_pbuffer_messages_1"),
    ("table", "pbuffer_dead_letters"),
    ("index", "sqlite_autoindex_pbuffer_dead_letters_1"),
    ("table", "pbuffer_counters"),
    ("index", "sqlite_autoindex_pbuffer_counters_1"),
})

_SUBJECT = sa.String(512).with_variant(mysql.VARCHAR(512, collation="utf8mb4_bin"), "mysql", "mariadb")
_OWNER = sa.LargeBinary(16).with_variant(mysql.BINARY(16), "mysql", "mariadb")
_COUNTERS = ("pending", "pending_bytes", "dead", "dead_bytes", "dropped", "expired")


def _already_there() -> tuple[set[str], bool]:
    """On MariaDB: the columns and the counters table an interrupted run of this revision already added.

    MariaDB commits each DDL statement as it runs and the version row is written last, so an upgrade stopped
    half-way leaves part of this revision applied at revision 0001; running it again skips that part. Elsewhere
    the migration is one transaction, never half-applied: nothing is skipped, and the DDL is exactly as before.
    """
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return set(), False
    inspector = sa.inspect(bind)
    columns = {column["name"] for column in inspector.get_columns("pbuffer_messages")}
    return columns & {"claim_owner", "claim_until_us"}, inspector.has_table("pbuffer_counters")


def upgrade() -> None:
    columns, has_counters = _already_there()
    if "claim_owner" not in columns:
        op.add_column("pbuffer_messages", sa.Column("claim_owner", _OWNER, nullable=True))
    if "claim_until_us" not in columns:
        op.add_column("pbuffer_messages", sa.Column("claim_until_us", sa.BigInteger(), nullable=True))
    if has_counters:
        # Left by an interrupted run; its rows (if any) are counted again from the messages below.
        op.execute("DELETE FROM pbuffer_counters")
    else:
        op.create_table(
            "pbuffer_counters",
            sa.Column("subject", _SUBJECT, primary_key=True),
            sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
            *(sa.Column(name, sa.BigInteger(), nullable=False) for name in _COUNTERS),
            mysql_engine="InnoDB", mysql_charset="utf8mb4",
        )
    # The counts of the rows already there, so stats() and limits are right from the first open.
    op.execute(
        "INSERT INTO pbuffer_counters (subject, shard, pending, pending_bytes, dead, dead_bytes, dropped, expired) "
        "SELECT subject, 0, sum(p), sum(pb), sum(d), sum(db), 0, 0 FROM ("
        "SELECT subject, 1 AS p, length(payload) AS pb, 0 AS d, 0 AS db FROM pbuffer_messages "
        "UNION ALL SELECT subject, 0, 0, 1, length(payload) FROM pbuffer_dead_letters"
        ") existing GROUP BY subject"
    )
    op.execute("INSERT INTO pbuffer_counters (subject, shard, pending, pending_bytes, dead, dead_bytes, dropped, "
               "expired) VALUES ('', -1, 0, 0, 0, 0, 0, 0)")


def downgrade() -> None:
    op.drop_table("pbuffer_counters")
    op.drop_column("pbuffer_messages", "claim_until_us")
    op.drop_column("pbuffer_messages", "claim_owner")
