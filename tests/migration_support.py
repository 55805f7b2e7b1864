"""A synthetic revision 0099 on top of the real ones, for tests only: it lets the upgrade machinery (backups, locks,
auto-upgrade, interrupted migrations) be exercised from the newest real revision, with data in the buffer.

The real migrations are copied next to it into a temporary script directory, and pbuffer's versioning is pointed
there for the duration of a test (and in the subprocesses the tests start).
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from pbuffer.backends import versioning
from pbuffer.backends.tables import COUNTED, COUNTERS, DEAD_LETTERS, MESSAGES, WRITER_REVISION

SYNTHETIC_REVISION = "0099"


def synthetic_scripts(directory: Path) -> Path:
    """A copy of pbuffer's migrations plus a revision 0099 on top; returns the script location."""
    location = directory / "migrations"
    shutil.copytree(versioning.SCRIPT_LOCATION, location, ignore=shutil.ignore_patterns("__pycache__"))
    objects = sorted(versioning.sqlite_objects(versioning.head_revision()))
    (location / "versions" / "0099_synthetic.py").write_text(textwrap.dedent(f'''
        """Revision 0099 (tests only): a new column filled from the rows already there."""

        from __future__ import annotations

        import os
        import time
        from pathlib import Path

        import sqlalchemy as sa
        from alembic import op

        revision = "0099"
        down_revision = {versioning.head_revision()!r}
        branch_labels = None
        depends_on = None

        SQLITE_OBJECTS = frozenset({objects!r})


        def upgrade() -> None:
            op.add_column({MESSAGES!r}, sa.Column("synthetic", sa.Integer(), nullable=True))
            op.execute("UPDATE {MESSAGES} SET synthetic = 1")
            log = os.environ.get("PBUFFER_TEST_MIGRATION_LOG")
            if log:
                with open(log, "a") as out:
                    out.write(f"{{os.getpid()}}\\n")
            if os.environ.get("PBUFFER_TEST_MIGRATION_FAIL"):
                raise RuntimeError("synthetic migration failure")
            pause = os.environ.get("PBUFFER_TEST_MIGRATION_PAUSE")
            if pause:
                Path(pause).touch()
                time.sleep(120)


        def downgrade() -> None:
            with op.batch_alter_table({MESSAGES!r}) as batch:
                batch.drop_column("synthetic")
    '''))
    return location


def writer_change_scripts(directory: Path) -> Path:
    """A copy of pbuffer's migrations plus a revision 0099 that changes what writers must do, the way a real one
    would: it renames the writers' tables to end in ``_0099``. Returns the script location."""
    location = directory / "migrations"
    shutil.copytree(versioning.SCRIPT_LOCATION, location, ignore=shutil.ignore_patterns("__pycache__"))
    renames = {name: name.removesuffix(WRITER_REVISION) + SYNTHETIC_REVISION
               for name in (MESSAGES, DEAD_LETTERS, COUNTERS, COUNTED)}
    objects = {(kind, name.replace(f"_{WRITER_REVISION}", f"_{SYNTHETIC_REVISION}"))
               for kind, name in versioning.sqlite_objects(versioning.head_revision())}
    (location / "versions" / "0099_writers.py").write_text(textwrap.dedent(f'''
        """Revision 0099 (tests only): writers work differently, so their tables are renamed."""

        from __future__ import annotations

        from alembic import op

        revision = "0099"
        down_revision = {versioning.head_revision()!r}
        branch_labels = None
        depends_on = None

        SQLITE_OBJECTS = frozenset({sorted(objects)!r})
        RENAMES = {renames!r}


        def upgrade() -> None:
            for old, new in RENAMES.items():
                op.rename_table(old, new)


        def downgrade() -> None:
            for old, new in RENAMES.items():
                op.rename_table(new, old)
    '''))
    return location


def use_scripts(location: str | Path) -> None:
    """Point pbuffer's versioning at another script directory (and forget what it had read)."""
    versioning.SCRIPT_LOCATION = str(location)
    versioning._script.cache_clear()
    versioning.known_revisions.cache_clear()
