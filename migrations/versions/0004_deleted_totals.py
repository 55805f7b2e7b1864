"""Revision 4: the counters keep a total of deleted messages per subject; the writers' tables end in ``_0004``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

``pbuffer_counters_0004`` gains ``deleted``: per subject, the messages deleted since this revision (by ``delete``
or ``delete_many``, which a relay calls after the PubAck, or by ``pop``), pending or dead, counted in the
transaction that deletes them. Every message ever saved is then in exactly one of pending, dead, dropped, expired
and deleted, so two readings of the counters tell how many messages were saved and how many were deleted between
them (``pbuffer watch`` shows those rates; before, only their difference could be known). Rows already there start
at 0: the totals count from the upgrade on.

Every writer that removes a message must now count it, so the writers' tables are renamed again (see revision
0003): a process still running pbuffer 0.2.0 stops at its next statement instead of deleting without counting.
Downgrade drops the column and renames the tables back.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Old name -> new name, for the tables a writer touches (the version table keeps its name: every pbuffer reads it).
RENAMES = {f"pbuffer_{name}_0003": f"pbuffer_{name}_0004" for name in ("messages", "dead_letters", "counters",
                                                                      "counted")}

# Every schema object a sqlite file holds at this revision, checked at open (anything else is refused).
SQLITE_OBJECTS: frozenset[tuple[str, str]] = frozenset({
    ("table", "pbuffer_alembic_version"),
    ("index", "sqlite_autoindex_pbuffer_alembic_version_1"),
    ("table", "pbuffer_messages_0004"),
    ("index", "sqlite_autoindex_pbuffer_messages_0004_1"),
    ("table", "pbuffer_dead_letters_0004"),
    ("index", "sqlite_autoindex_pbuffer_dead_letters_0004_1"),
    ("table", "pbuffer_counters_0004"),
    ("index", "sqlite_autoindex_pbuffer_counters_0004_1"),
    ("table", "pbuffer_counted_0004"),
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
    columns = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("pbuffer_counters_0004")}
    if "deleted" not in columns:  # (added already by a stopped MariaDB run)
        op.add_column("pbuffer_counters_0004",
                      sa.Column("deleted", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    # batch: sqlite before 3.35 has no DROP COLUMN; the counters table is small (a row per subject and shard).
    with op.batch_alter_table("pbuffer_counters_0004") as batch:
        batch.drop_column("deleted")
    _rename({new: old for old, new in RENAMES.items()})
