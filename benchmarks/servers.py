"""PostgreSQL and MariaDB for the server-backend cases: a database of the harness's own per repetition.

The admin URL names a server and a database the harness may connect to in order to ``CREATE DATABASE``; it
comes from ``--postgresql`` / ``--mariadb`` (see :class:`.harness.Settings` for the defaults). Every repetition
gets a fresh database (``pbuffer_bench_<pid>_<random>``), dropped right after, as every sqlite repetition gets a
fresh directory. A server that cannot be reached skips its cases
with the reason (:func:`unreachable`); it never fails the run.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

__all__ = [
    "DRIVERS",
    "SERVERS",
    "fresh_database",
    "public_url",
    "unreachable",
]

#: The backends (``--backend`` names) that run on a database server.
SERVERS = ("postgresql", "mariadb")
#: The driver module each needs (a missing one skips the cases: ``pip install 'pbuffer[postgresql]'``, ``[mysql]``).
DRIVERS = {"postgresql": "psycopg", "mariadb": "pymysql"}
#: Seconds to wait for a server that does not answer before skipping its cases.
CONNECT_TIMEOUT = 5


def public_url(url: str) -> str:
    """``url`` with any password masked, for notes and skip reasons."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


def _admin_engine(admin_url: str) -> sa.Engine:
    return sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool,
                            connect_args={"connect_timeout": CONNECT_TIMEOUT})


@functools.cache
def unreachable(backend: str, admin_url: str) -> str | None:
    """Why the ``backend`` cases cannot run against ``admin_url`` (``None`` if they can). Asked once per process."""
    import importlib.util

    driver = DRIVERS[backend]
    if importlib.util.find_spec(driver) is None:
        extra = "postgresql" if backend == "postgresql" else "mysql"
        return f"skipped: {backend} driver not installed ({driver}; pip install 'pbuffer[{extra}]')"
    try:
        engine = _admin_engine(admin_url)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"skipped: {backend} not reachable at {public_url(admin_url)} ({type(exc).__name__}: {first_line})"
    return None


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """Create an empty database on ``admin_url``'s server; yield its URL; drop it (forcibly on PostgreSQL) after.

    Whoever used it must have closed their buffers first (MariaDB waits for open connections' locks).
    """
    name = f"pbuffer_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            with engine.connect() as connection:
                force = " WITH (FORCE)" if engine.dialect.name == "postgresql" else ""
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}{force}")
    finally:
        engine.dispose()


def describe(backend: str, admin_url: str | None, directory: object = None) -> str:
    """The server's version and the settings that decide what a commit costs, read back (a case's probe)."""
    if admin_url is None:
        return ""
    queries = {
        "postgresql": ("SELECT version()", ("fsync", "synchronous_commit", "wal_sync_method")),
        "mariadb": ("SELECT VERSION()", ("innodb_flush_log_at_trx_commit", "sync_binlog", "log_bin")),
    }
    version_sql, settings = queries[backend]
    engine = _admin_engine(admin_url)
    try:
        with engine.connect() as connection:
            version = str(connection.exec_driver_sql(version_sql).scalar())
            found = []
            for name in settings:
                sql = f"SHOW {name}" if backend == "postgresql" else f"SHOW VARIABLES LIKE '{name}'"
                row = connection.exec_driver_sql(sql).fetchone()
                if row is not None:
                    found.append(f"{name}={row[-1]}")
    finally:
        engine.dispose()
    short = version.split(" on ", maxsplit=1)[0].split(",", maxsplit=1)[0]
    return f"Server: {backend} {short}, {', '.join(found)}."
