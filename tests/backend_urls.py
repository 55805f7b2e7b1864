"""The one table of backends every shared test and benchmark runs against.

Server backends get a private database per test session (so parallel runs do not collide); a backend whose
server is not running is skipped locally and fails the run when ``CI`` is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get("PBUFFER_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN_URL = os.environ.get("PBUFFER_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def missing_service(reason: str) -> None:
    """Skip locally, fail under CI: a missing service must never turn a CI run green."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@dataclass(frozen=True)
class Backend:
    name: str
    # Given a fresh temporary directory, yields the URL of an empty store, cleaned up afterwards.
    store: Callable[[Path], Iterator[str]]
    server: bool = False


def _memory(_tmp: Path) -> Iterator[str]:
    yield f"memory://test-{uuid.uuid4().hex}"


def _sqlite(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'buffer.db'}"


class ServerDatabase:
    """A database of its own on a running PostgreSQL or MariaDB server, made once per test session."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.url: str | None = None
        self.error: str | None = None

    def ensure(self) -> str:
        if self.url is None and self.error is None:
            import sqlalchemy as sa

            name = f"pbuffer_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            try:
                engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
                with engine.connect() as conn:
                    conn.exec_driver_sql(f"CREATE DATABASE {name}")
                engine.dispose()
            except Exception as exc:
                self.error = f"{self.admin_url.split('+')[0]} is not available at {self.admin_url}: {exc}"
            else:
                self.url = str(sa.make_url(self.admin_url).set(database=name).render_as_string(hide_password=False))
        if self.url is None:
            missing_service(self.error or "database unavailable")
        assert self.url is not None
        return self.url

    def empty(self) -> str:
        """The database's URL, with pbuffer's tables dropped."""
        import sqlalchemy as sa

        url = self.ensure()
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with engine.begin() as conn:
            # Every pbuffer table of every revision (their names change with the writer revision), and what a test
            # of an application's own alembic setup left.
            for table in sa.inspect(conn).get_table_names():
                if table.startswith("pbuffer_") or table == "alembic_version":
                    conn.exec_driver_sql(f"DROP TABLE {table}")
        engine.dispose()
        return url

    def drop(self) -> None:
        if self.url is None:
            return
        import sqlalchemy as sa

        name = sa.make_url(self.url).database
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        engine.dispose()


POSTGRES = ServerDatabase(POSTGRES_ADMIN_URL)
MYSQL = ServerDatabase(MYSQL_ADMIN_URL)


def _server(database: ServerDatabase) -> Callable[[Path], Iterator[str]]:
    def store(_tmp: Path) -> Iterator[str]:
        yield database.empty()

    return store


BACKENDS = [
    Backend("memory", _memory),
    Backend("sqlite", _sqlite),
    Backend("postgresql", _server(POSTGRES), server=True),
    Backend("mysql", _server(MYSQL), server=True),
]
SQL_BACKENDS = [b for b in BACKENDS if b.name != "memory"]
