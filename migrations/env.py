"""alembic environment for pbuffer. It only ever runs online, on a connection (or engine) passed in by pbuffer
(or by pytest-alembic in the tests); it never reads an ini file or touches logging."""

from __future__ import annotations

from alembic import context
from pbuffer.backends.tables import VERSION_TABLE, metadata
from sqlalchemy.engine import Connection, Engine


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # sqlite lacks most ALTERs: batch mode recreates tables instead.
        render_as_batch=True,
        # With pbuffer's BEGIN handling sqlite's DDL is transactional: a migration is all or nothing.
        # MariaDB commits each DDL statement implicitly whatever we say (see the README).
        transactional_ddl=connection.dialect.name not in ("mysql", "mariadb"),
    )
    with context.begin_transaction():
        context.run_migrations()


connectable = context.config.attributes.get("connection")
if isinstance(connectable, Connection):
    run(connectable)
elif isinstance(connectable, Engine):
    with connectable.connect() as opened:
        run(opened)
        opened.commit()
else:  # pragma: no cover - a misuse, not a path pbuffer takes
    raise RuntimeError("pbuffer's migrations run through pbuffer.backends.versioning, with a live connection")
