"""A message as a row of the SQL backends' tables, and back: the columns in order, the values a save binds (with the
message's checksum), and the message a read returns (checksum verified, so damaged bytes are never handed out).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from typing import Any

from pbuffer.errors import CorruptDatabaseError
from pbuffer.ids import from_bytes, to_bytes
from pbuffer.message import NO_HEADERS, Message, checksum, decode_headers, encode_headers

__all__ = ["COLUMNS", "DEAD_COLUMNS", "ROWS_PER_INSERT", "SEQ_COLUMNS", "insert_rows", "message_from_row",
           "messages_from_seq_rows", "row_params", "row_values", "rows_values", "sqlite_id"]

#: A message's columns, in the order every statement reads and writes them.
COLUMNS = "id, subject, payload, headers, created_us, checksum"
#: A locked row: its seq, then the message's columns.
SEQ_COLUMNS = ("seq", *COLUMNS.split(", "))
#: A dead letter: the message's columns, then why and when it died.
DEAD_COLUMNS = f"{COLUMNS}, reason, attempts, failed_us"


def row_values(message: Message) -> tuple[Any, ...]:
    """:func:`row_params` as a tuple, in the order of ``COLUMNS`` (sqlite binds positional parameters faster)."""
    headers = encode_headers(message.headers)
    return (to_bytes(message.id), message.subject, message.payload, headers, message.created_us,
            checksum(message.id, message.subject, headers, message.created_us, message.payload))


#: Payloads up to this many bytes are bound as a bytearray copy (see :func:`rows_values`); a larger one as it is,
#: where copying it would cost more than the adapter lookup it spares.
_COPY_PAYLOADS_UP_TO = 4096


def rows_values(messages: list[Message]) -> tuple[list[tuple[Any, ...]], bool]:
    """The rows a sqlite save binds, in one loop, and whether they hold the headers column (``insert_row``) or
    leave it out (``insert_bare``: no message has headers, the common case; the column's default is NULL).

    :func:`row_values` of each message in value, typed for CPython's sqlite3 module, which binds int, float, str
    and bytearray as they are but sends every other value (bytes and None included) through its adapter registry
    first: a tuple, a dict lookup and two attribute lookups each, about a third of an ``executemany``'s time for
    the three such values of a row (measured; CPython 3.10 to 3.13 alike). So the id is a bytearray, a payload up
    to 4 KiB a bytearray copy, and no NULL is bound. One loop because a ``save_many`` of 1,000 messages spent a
    third of its Python in calls per message; the checksum is :func:`pbuffer.message.checksum`'s, written out
    (``tests/test_sql_rows.py`` compares them on every kind of message)."""
    rows: list[tuple[Any, ...]] = []
    append, crc32, fromhex, up_to = rows.append, zlib.crc32, bytearray.fromhex, _COPY_PAYLOADS_UP_TO
    for message in messages:
        if message.headers:
            return _headed_rows(messages), True
        message_id, subject, payload, created_us = message.id, message.subject, message.payload, message.created_us
        head = f"{message_id}\x00{subject}\x00\x00{created_us}\x00".encode()
        append((fromhex(message_id.replace("-", "")), subject,
                bytearray(payload) if len(payload) <= up_to else payload, created_us, crc32(payload, crc32(head))))
    return rows, False


#: Rows per INSERT statement when sqlite saves several messages (:func:`insert_rows`). 100 rows of at most 6 columns
#: bind 600 parameters, under the 999 that sqlite builds before 3.32 allow.
ROWS_PER_INSERT = 100


def insert_rows(cursor: Any, statement: str, rows: list[tuple[Any, ...]]) -> None:
    """sqlite: insert ``rows`` (each the parameters of ``statement``, an INSERT of one row) in statements of up to
    :data:`ROWS_PER_INSERT` rows each, ``INSERT ... VALUES (...), (...), ...``, in their order.

    An ``executemany`` steps, resets and binds the statement again for every row; one statement of many rows
    steps once. A ``save_many`` of 1,000 messages spent 2.2 us a message in sqlite that way and 1.4 us this way
    (measured, the rest of the save alike). sqlite inserts a VALUES list's rows in the order written, so their
    seqs ascend in the order given, as ``executemany``'s do. What is left after the full statements goes in
    statements of a power of two rows each (37: 32, 4, 1), so a connection prepares at most eight shapes of each
    INSERT and its statement cache (128 entries) keeps the other statements."""
    start, total = 0, len(rows)
    while start < total:
        left = total - start
        count = ROWS_PER_INSERT if left >= ROWS_PER_INSERT else 1 << (left.bit_length() - 1)
        if count == 1:
            cursor.execute(statement, rows[start])
        else:
            cursor.execute(_rows_statement(statement, count), list(chain.from_iterable(rows[start:start + count])))
        start += count


@lru_cache(maxsize=32)
def _rows_statement(statement: str, count: int) -> str:
    """``statement`` (``INSERT ... VALUES (?, ...)``) with its VALUES row written ``count`` times."""
    head, values = statement.split(" VALUES ")
    return f"{head} VALUES {', '.join([values] * count)}"


def sqlite_id(message_id: str) -> bytearray:
    """An id's 16 bytes as sqlite binds them fastest (a bytearray: see :func:`rows_values`)."""
    return bytearray.fromhex(message_id.replace("-", ""))


def _headed_rows(messages: list[Message]) -> list[tuple[Any, ...]]:
    """:func:`rows_values` with the headers column, for a call where some message has headers."""
    rows: list[tuple[Any, ...]] = []
    for message in messages:
        _, subject, payload, headers, created_us, crc = row_values(message)
        rows.append((sqlite_id(message.id), subject, bytearray(payload) if len(payload) <= _COPY_PAYLOADS_UP_TO
                     else payload, headers, created_us, crc))
    return rows


def row_params(message: Message) -> dict[str, Any]:
    """The columns of a message, with its checksum."""
    headers = encode_headers(message.headers)
    return {"id": to_bytes(message.id), "subject": message.subject, "payload": message.payload,
            "headers": headers, "created_us": message.created_us,
            "checksum": checksum(message.id, message.subject, headers, message.created_us, message.payload)}


def message_from_row(row: Sequence[Any]) -> Message:
    """A Message from (id, subject, payload, headers, created_us, checksum), checksum verified."""
    raw_id, subject, payload, headers, created_us, crc = row
    message_id = from_bytes(bytes(raw_id)) if len(raw_id) == 16 else repr(bytes(raw_id))
    payload = bytes(payload)
    created_us = int(created_us)
    if checksum(message_id, subject, headers, created_us, payload) != int(crc):
        raise CorruptDatabaseError(f"message {message_id} failed its checksum: its stored bytes are damaged",
                                   message_id=message_id)
    try:
        decoded = decode_headers(headers)
    except ValueError as exc:  # pragma: no cover - the checksum catches this first
        raise CorruptDatabaseError(f"message {message_id} has unreadable headers", message_id=message_id) from exc
    return Message(message_id, subject, payload, decoded, created_us)


def messages_from_seq_rows(rows: Sequence[Sequence[Any]]) -> list[Message]:
    """:func:`message_from_row` for each row of (seq, id, subject, payload, headers, created_us, checksum), as a
    claim reads them, in one loop: a claim reads hundreds of rows, and a call, a slice and the helpers per row were
    half of its Python. The same checks and checksum as :func:`message_from_row` (``pbuffer.message.checksum``,
    spelled out; ``tests/test_sql_rows.py`` holds them equal)."""
    messages: list[Message] = []
    append = messages.append
    crc32 = zlib.crc32
    for _seq, stored_id, subject, stored_payload, headers, stored_created_us, crc in rows:
        raw_id = stored_id if type(stored_id) is bytes else bytes(stored_id)
        if len(raw_id) == 16:
            h = raw_id.hex()
            message_id = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
        else:
            message_id = repr(raw_id)
        payload = stored_payload if type(stored_payload) is bytes else bytes(stored_payload)
        created_us = stored_created_us if type(stored_created_us) is int else int(stored_created_us)
        head = f"{message_id}\x00{subject}\x00{headers or ''}\x00{created_us}\x00".encode()
        if crc32(payload, crc32(head)) != int(crc):
            raise CorruptDatabaseError(f"message {message_id} failed its checksum: its stored bytes are damaged",
                                       message_id=message_id)
        if headers:
            try:
                decoded = decode_headers(headers)
            except ValueError as exc:  # pragma: no cover - the checksum catches this first
                raise CorruptDatabaseError(f"message {message_id} has unreadable headers",
                                           message_id=message_id) from exc
        else:
            decoded = NO_HEADERS
        append(Message(message_id, subject, payload, decoded, created_us))
    return messages
