"""alembic environment for pbuffer. It only ever runs online, on a connection pbuffer passes in."""

from __future__ import annotations

from alembic import context
from pbuffer.backends.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - a misuse, not a path pbuffer takes
    raise RuntimeError("pbuffer migrations run through pbuffer.backends.versioning, with a live connection")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    # sqlite lacks most ALTERs: batch mode recreates tables instead.
    render_as_batch=True,
    # With pbuffer's BEGIN handling sqlite's DDL is transactional: a migration is all or nothing.
    # MariaDB commits each DDL statement implicitly whatever we say (see the README).
    transactional_ddl=connection.dialect.name != "mysql",
)
with context.begin_transaction():
    context.run_migrations()
