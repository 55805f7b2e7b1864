"""Revision 5: sqlite's pops write no counters row; the writers' tables end in ``_0005``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

``pbuffer_counted_0005`` gains ``head_to_seq``. On sqlite, the pending messages with ``seq <= head_to_seq`` (the
head) are counted in advance as deleted: the counters hold them in ``deleted`` and not in ``pending``, and
``stats()`` adds up the head's rows that are still there, moving them back from deleted to pending as it reads. A
pop of a head message then deletes its row and writes nothing else: one page fewer per pop's commit (3 frames in
the WAL became 2; pop ran at 0.6x a bare ``DELETE ... RETURNING`` of the same row, and at 0.8-1.0x without the
counters write, measured). A pop that reaches past an empty head moves it over the next 1,024 counted rows (64
when limits are set) in one statement, so the counters are written once per that many pops. Any other removal of a
head row (a relay's delete, a dead letter, the limits' drops, expiry) counts it out of deleted into where it went
(``counters.tally_removed``).

The invariant the writers keep: ``0 <= head_to_seq <= up_to_seq``, and neither mark exceeds the largest seq present
(sqlite gives a new row max(seq) + 1: a new row must never land in the head or below the counted mark).

Every writer that pops must now know the head, so the writers' tables are renamed again (see revision 0003): a
process still running pbuffer 0.3.0 stops at its next statement instead of counting a head message a second time.
Server databases count in every transaction and leave ``head_to_seq`` at 0. Downgrade gives the head back to the
counters (pending up, deleted down), drops the column and renames the tables back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Old name -> new name, for the tables a writer touches (the version table keeps its name: every pbuffer reads it).
RENAMES = {f"pbuffer_{name}_0004": f"pbuffer_{name}_0005" for name in ("messages", "dead_letters", "counters",
                                                                      "counted")}

# Every schema object a sqlite file holds at this revision, checked at open (anything else is refused).
SQLITE_OBJECTS: frozenset[tuple[str, str]] = frozenset({
    ("table", "pbuffer_alembic_version"),
    ("index", "sqlite_autoindex_pbuffer_alembic_version_1"),
    ("table", "pbuffer_messages_0005"),
    ("index", "sqlite_autoindex_pbuffer_messages_0005_1"),
    ("table", "pbuffer_dead_letters_0005"),
    ("index", "sqlite_autoindex_pbuffer_dead_letters_0005_1"),
    ("table", "pbuffer_counters_0005"),
    ("index", "sqlite_autoindex_pbuffer_counters_0005_1"),
    ("table", "pbuffer_counted_0005"),
})


def _rename(pairs: dict[str, str]) -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    # MariaDB commits DDL as it goes and writes the version row last: a run stopped after the rename left the new
    # names at the old revision, and running again must not fail on them. Elsewhere the migration is one
    # transaction and never half-applied.
    todo = {old: new for old, new in pairs.items() if old in present or new not in present}
    if not todo:
        return
    if bind.dialect.name in ("mysql", "mariadb"):
        # One statement renames them all atomically: no moment where a writer finds some old names and some new.
        op.execute("RENAME TABLE " + ", ".join(f"{old} TO {new}" for old, new in todo.items()))
    else:
        for old, new in todo.items():
            op.rename_table(old, new)


def upgrade() -> None:
    _rename(RENAMES)
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("pbuffer_counted_0005")}
    if "head_to_seq" not in columns:  # (added already by a stopped MariaDB run)
        # An empty head: every counted row stays where revision 0004 counted it.
        op.add_column("pbuffer_counted_0005",
                      sa.Column("head_to_seq", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    bind = op.get_bind()
    head = bind.execute(sa.text("SELECT head_to_seq FROM pbuffer_counted_0005")).scalar()
    if head:
        # The head's rows go back to pending, and out of deleted, where revision 0004 expects them (the counted
        # rows; sqlite only: servers never move the head). At most 1,024 rows, summed by subject.
        sums = bind.execute(sa.text("SELECT subject, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) "
                                    "FROM pbuffer_messages_0005 WHERE seq <= :head GROUP BY subject"),
                            {"head": head}).fetchall()
        for subject, rows, size in sums:
            bind.execute(sa.text("UPDATE pbuffer_counters_0005 SET pending = pending + :rows, "
                                 "pending_bytes = pending_bytes + :size, deleted = deleted - :rows "
                                 "WHERE subject = :subject AND shard = 0"),
                         {"rows": int(rows), "size": int(size), "subject": subject})
    # batch: sqlite before 3.35 has no DROP COLUMN; the table holds one row.
    with op.batch_alter_table("pbuffer_counted_0005") as batch:
        batch.drop_column("head_to_seq")
    _rename({new: old for old, new in RENAMES.items()})
