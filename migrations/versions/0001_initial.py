"""Revision 1: pending messages and dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every schema object a sqlite file holds at this revision, checked at open (anything else is refused).
SQLITE_OBJECTS: frozenset[tuple[str, str]] = frozenset({
    ("table", "pbuffer_alembic_version"),
    ("index", "sqlite_autoindex_pbuffer_alembic_version_1"),
    ("table", "pbuffer_messages"),
    ("index", "sqlite_autoindex_pbuffer_messages_1"),
    ("table", "pbuffer_dead_letters"),
    ("index", "sqlite_autoindex_pbuffer_dead_letters_1"),
})

_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TEXT = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
_MYSQL = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def _message_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("id", sa.LargeBinary(16).with_variant(mysql.BINARY(16), "mysql", "mariadb"), nullable=False,
                  unique=True),
        sa.Column("subject", sa.String(512).with_variant(mysql.VARCHAR(512, collation="utf8mb4_bin"),
                                                         "mysql", "mariadb"), nullable=False),
        sa.Column("payload", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
                  nullable=False),
        sa.Column("headers", _TEXT, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("checksum", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "pbuffer_messages",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        *_message_columns(),
        **_MYSQL,
    )
    op.create_table(
        "pbuffer_dead_letters",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        *_message_columns(),
        sa.Column("reason", _TEXT, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_us", sa.BigInteger(), nullable=False),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("pbuffer_dead_letters")
    op.drop_table("pbuffer_messages")
