"""Revision 3: the writers' tables carry their revision in their names; sqlite counts new messages lazily.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A process opens a buffer once and checks its revision then; if another process upgrades the database afterwards,
the first one's statements still found the tables by name and kept writing the old way: a pbuffer 0.1.0 process
saved rows without counting them (``stats()`` went wrong) and popped messages that a new relay had claimed. Here
the three tables a writer touches are renamed to end in ``_0003``, the revision whose writers they expect. Every
statement of an older process now fails at once ("no such table", "relation does not exist") instead of writing
the wrong way; readers stop too. A later revision that changes what a writer must do renames them again; one that
does not keeps the names. The rename is a catalogue change on every backend (no row is copied), and downgrade
renames them back, so a process running this pbuffer stops in turn.

``pbuffer_counted_0003`` holds one row, ``up_to_seq``: on sqlite, the pending messages with ``seq <= up_to_seq`` are
in the counters and the newer ones (the tail) are not yet, so a save writes its row and nothing else; ``stats()``
adds the tail, and a writer folds it into the counters every so often. Removals decrement the counters only for
rows at or below the mark, and lower the mark when they remove the newest rows (sqlite may then reuse their seq).
Server databases keep counting in every transaction (their seqs commit out of order) and never move the mark.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Old name -> new name, for the tables a writer touches (the version table keeps its name: every pbuffer reads it).
RENAMES = {
    "pbuffer_messages": "pbuffer_messages_0003",
    "pbuffer_dead_letters": "pbuffer_dead_letters_0003",
    "pbuffer_counters": "pbuffer_counters_0003",
}

# Every schema object a sqlite file holds at this revision, checked at open (anything else is refused).
SQLITE_OBJECTS: frozenset[tuple[str, str]] = frozenset({
    ("table", "pbuffer_alembic_version"),
    ("index", "sqlite_autoindex_pbuffer_alembic_version_1"),
    ("table", "pbuffer_messages_0003"),
    ("index", "sqlite_autoindex_pbuffer_messages_0003_1"),
    ("table", "pbuffer_dead_letters_0003"),
    ("index", "sqlite_autoindex_pbuffer_dead_letters_0003_1"),
    ("table", "pbuffer_counters_0003"),
    ("index", "sqlite_autoindex_pbuffer_counters_0003_1"),
    ("table", "pbuffer_counted_0003"),
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
        # One statement renames all three atomically: no moment where a writer finds some old names and some new.
        op.execute("RENAME TABLE " + ", ".join(f"{old} TO {new}" for old, new in todo.items()))
    else:
        for old, new in todo.items():
            op.rename_table(old, new)


def upgrade() -> None:
    _rename(RENAMES)
    bind = op.get_bind()
    if not sa.inspect(bind).has_table("pbuffer_counted_0003"):  # (made already by a stopped MariaDB run)
        op.create_table("pbuffer_counted_0003", sa.Column("up_to_seq", sa.BigInteger(), nullable=False),
                        mysql_engine="InnoDB", mysql_charset="utf8mb4")
    op.execute("DELETE FROM pbuffer_counted_0003")
    # Revision 0002 counted every row in its transaction: all of them are in the counters.
    op.execute("INSERT INTO pbuffer_counted_0003 (up_to_seq) "
               "SELECT COALESCE(MAX(seq), 0) FROM pbuffer_messages_0003")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # Revision 0002 expects every pending row counted: fold the tail in first.
        op.execute(
            "INSERT INTO pbuffer_counters_0003 (subject, shard, pending, pending_bytes, dead, dead_bytes, dropped, "
            "expired) SELECT subject, 0, COUNT(*), SUM(LENGTH(payload)), 0, 0, 0, 0 FROM pbuffer_messages_0003 "
            "WHERE seq > (SELECT up_to_seq FROM pbuffer_counted_0003) GROUP BY subject "
            "ON CONFLICT (subject, shard) DO UPDATE SET pending = pending + excluded.pending, "
            "pending_bytes = pending_bytes + excluded.pending_bytes")
    op.drop_table("pbuffer_counted_0003")
    _rename({new: old for old, new in RENAMES.items()})
