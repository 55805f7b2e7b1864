"""The buffer's tables at the newest schema revision, as SQLAlchemy metadata.

This model is what ``pbuffer db check`` compares the migrations against; the migrations themselves never import
it (each revision spells out its own DDL, frozen in time). Every name is prefixed ``pbuffer_`` so a buffer can share
an application's database, and none is ever built from user input.

Pending messages and dead letters live in two tables so the hot paths (save, get, pop) touch a table that holds
only pending rows, in ``seq`` order, with no state to filter on. Every index costs each save a page write, so
``pbuffer_messages`` has just two B-trees: its rows by ``seq`` and the unique ``id``. A buffer scoped to a subject
walks pending rows in ``seq`` order, skipping other subjects' (see the README on scoped buffers).

The tables a writer touches end in the revision whose writers they expect (:data:`WRITER_REVISION`): a revision
that changes what writers must do renames them, so a process still running an older pbuffer fails on its next
statement instead of writing the old way (revisions 0003, 0004 and 0005 explain).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, MetaData, String, Table, Text
from sqlalchemy.dialects import mysql

__all__ = ["COUNTED", "COUNTERS", "COUNTER_COLUMNS", "DEAD_LETTERS", "MESSAGES", "VERSION_TABLE", "WRITER_REVISION",
           "counted", "counters", "dead_letters", "messages", "metadata"]

VERSION_TABLE = "pbuffer_alembic_version"
#: The newest revision that changed what a writer must do; the writers' tables carry it in their names.
WRITER_REVISION = "0005"
MESSAGES = f"pbuffer_messages_{WRITER_REVISION}"
DEAD_LETTERS = f"pbuffer_dead_letters_{WRITER_REVISION}"
COUNTERS = f"pbuffer_counters_{WRITER_REVISION}"
COUNTED = f"pbuffer_counted_{WRITER_REVISION}"
#: What pbuffer_counters counts, per subject and shard.
COUNTER_COLUMNS = ("pending", "pending_bytes", "dead", "dead_bytes", "dropped", "expired", "deleted")

metadata = MetaData()

# sqlite makes a column declared exactly INTEGER PRIMARY KEY its rowid. seq only orders rows (the id is the
# identity), and a new row always gets a seq above every row present, so AUTOINCREMENT's extra page write per
# insert (sqlite_sequence) would buy nothing.
SEQ_TYPE = BigInteger().with_variant(Integer(), "sqlite")
# The 16 bytes of the UUIDv7 id: a smaller index than its text, and so a cheaper insert.
ID_TYPE = LargeBinary(16).with_variant(mysql.BINARY(16), "mysql", "mariadb")
# NATS subjects are case-sensitive; MariaDB's default collation is not.
SUBJECT_TYPE = String(512).with_variant(mysql.VARCHAR(512, collation="utf8mb4_bin"), "mysql", "mariadb")
# MariaDB's BLOB and TEXT stop at 64 KiB.
PAYLOAD_TYPE = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
TEXT_TYPE = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _message_columns() -> list[Column[Any]]:
    return [
        Column("id", ID_TYPE, nullable=False, unique=True),
        Column("subject", SUBJECT_TYPE, nullable=False),
        Column("payload", PAYLOAD_TYPE, nullable=False),
        Column("headers", TEXT_TYPE, nullable=True),
        Column("created_us", BigInteger, nullable=False),
        Column("checksum", BigInteger, nullable=False),
    ]


messages = Table(
    MESSAGES,
    metadata,
    Column("seq", SEQ_TYPE, primary_key=True, autoincrement=True),
    *_message_columns(),
    # A relay's claim on the message (see Buffer.claim): its owner and the lease's end; NULL when unclaimed.
    Column("claim_owner", ID_TYPE, nullable=True),
    Column("claim_until_us", BigInteger, nullable=True),
    **_MYSQL,
)

dead_letters = Table(
    DEAD_LETTERS,
    metadata,
    # Dead letters list in the order they died.
    Column("seq", SEQ_TYPE, primary_key=True, autoincrement=True),
    *_message_columns(),
    Column("reason", TEXT_TYPE, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failed_us", BigInteger, nullable=False),
    **_MYSQL,
)

# Counts kept in the transactions that change the rows they count, so stats() and limits never count(*) a table.
# Server databases spread writers over shards (one hot row would serialize every save); sqlite uses shard 0.
counters = Table(
    COUNTERS,
    metadata,
    Column("subject", SUBJECT_TYPE, primary_key=True),
    Column("shard", Integer, primary_key=True, autoincrement=False),
    *(Column(name, BigInteger, nullable=False) for name in COUNTER_COLUMNS if name != "deleted"),
    # Revision 0004 added it to tables that already had rows: they start at 0.
    Column("deleted", BigInteger, nullable=False, server_default="0"),
    **_MYSQL,
)

# One row: on sqlite, the pending messages with seq <= up_to_seq are in the counters; newer ones (the tail) are
# added up when read and folded in by a writer every so often, so a save writes its row and nothing else. Those
# with seq <= head_to_seq (the head, revision 0005) are counted in advance as deleted, so a pop of one deletes its
# row and writes nothing else (see sql_counting). Server databases count in every transaction instead (their seqs
# commit out of order) and leave both at their start.
counted = Table(
    COUNTED,
    metadata,
    Column("up_to_seq", BigInteger, nullable=False),
    Column("head_to_seq", BigInteger, nullable=False, server_default="0"),
    **_MYSQL,
)
