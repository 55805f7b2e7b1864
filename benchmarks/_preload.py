"""Imported once by the fork server that starts every case's process (see :mod:`.isolation`), so that no case
pays for the imports pbuffer makes lazily on its first open (the sqlite backend, alembic and the migrations, the
server drivers, nats-py): those would otherwise land in whichever case ran first, in its time and its memory.

Importing this module opens (and removes) one throwaway sqlite buffer; nothing stays open.
"""

from __future__ import annotations

import contextlib
import importlib
import shutil
import tempfile
from pathlib import Path

import pbuffer

from . import cases  # noqa: F401  (the harness itself)

#: Optional modules the cases import when they run (a missing one is simply not preloaded).
OPTIONAL = ("psycopg", "pymysql", "sqlalchemy.dialects.postgresql.psycopg", "sqlalchemy.dialects.mysql.pymysql",
            "nats", "nats.js", "pbuffer.relay.jetstream", "persistqueue", "litequeue")


def _warm() -> None:
    for name in OPTIONAL:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    directory = Path(tempfile.mkdtemp(prefix="pbuffer-bench-preload-"))
    try:
        buffer = pbuffer.open(f"sqlite:///{directory / 'warm.db'}")
        try:
            buffer.save(b"x", subject="bench.warm")
            buffer.pop()
        finally:
            buffer.close()
    except Exception:  # a broken pbuffer shows in the cases themselves, with its error
        pass
    finally:
        shutil.rmtree(directory, ignore_errors=True)


_warm()
