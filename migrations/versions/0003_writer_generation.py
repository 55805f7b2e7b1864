"""Revision 3: the tables carry the writer generation in their names, so a process running an older pbuffer stops.

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


def downgrade() -> None:
    _rename({new: old for old, new in RENAMES.items()})
