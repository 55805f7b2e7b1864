"""The SQL backends' rows read back as messages: a claim's bulk read checks exactly what a single read checks."""

from __future__ import annotations

from typing import Any

import pytest
from pbuffer.backends.sql_rows import message_from_row, messages_from_seq_rows, row_values, rows_values

from pbuffer import CorruptDatabaseError, ids
from pbuffer.message import NO_HEADERS, Message
from pbuffer.validation import check_headers


def some_messages() -> list[Message]:
    return [
        Message(ids.new_id(), "orders.created", b"x" * 100, NO_HEADERS, 1_700_000_000_000_000),
        Message(ids.new_id(), "orders.paid", b"", check_headers({"Trace": "t-1", "Z": "\u00e9"}), 1),
        Message(ids.new_id(), "a", b"\x00\xff", NO_HEADERS, 0),
        Message(ids.new_id(), "\u00e9.\u4e2d", b"\x00" * 70_000, check_headers({"K": "v\x00"[:1]}), 2**53),
    ]


def claim_rows() -> list[tuple[Any, ...]]:
    messages = some_messages()[:3]
    rows: list[tuple[Any, ...]] = [(seq, *row_values(m)) for seq, m in enumerate(messages, start=7)]
    # Drivers hand back memoryview/bytearray for blobs and other integer types: read the same.
    seq, raw_id, subject, payload, headers, created_us, crc = rows[2]
    rows[2] = (seq, memoryview(raw_id), subject, bytearray(payload), headers, float(created_us), str(crc))
    return rows


def test_a_batchs_rows_are_what_single_saves_write() -> None:
    # save_many's loop spells out row_values and the checksum: any difference would be a row its reader rejects.
    messages = some_messages()
    assert rows_values(messages) == [row_values(m) for m in messages]
    assert [message_from_row(row) for row in rows_values(messages)] == messages


def test_a_claims_bulk_read_gives_what_single_reads_give() -> None:
    rows = claim_rows()
    assert messages_from_seq_rows(rows) == [message_from_row(row[1:]) for row in rows]
    read = messages_from_seq_rows(rows)
    assert read[1].headers == {"Trace": "t-1", "Z": "\u00e9"}
    assert all(type(m.headers) is type(NO_HEADERS) for m in read)  # read-only, as every Message's headers
    # An id of another length (a row written by hand) reads as its repr, as a single read does.
    odd = (1, b"short", "s", b"p", None, 5, 0)
    with pytest.raises(CorruptDatabaseError) as bulk:
        messages_from_seq_rows([odd])
    with pytest.raises(CorruptDatabaseError) as single:
        message_from_row(odd[1:])
    assert bulk.value.message_id == single.value.message_id == repr(b"short")


@pytest.mark.parametrize("column", [1, 2, 3, 4, 5, 6])
def test_any_damaged_column_fails_the_checksum(column: int) -> None:
    rows = claim_rows()
    row = list(rows[1])
    damaged: Any = {1: lambda v: bytes([v[0] ^ 1]) + v[1:], 2: lambda v: v + "x", 3: lambda v: v + b"!",
                    4: lambda v: v.replace("t-1", "t-2"), 5: lambda v: v + 1, 6: lambda v: v ^ 1}[column]
    row[column] = damaged(row[column])
    with pytest.raises(CorruptDatabaseError) as caught:
        messages_from_seq_rows([rows[0], tuple(row), rows[2]])
    expected = message_from_row(rows[1][1:]).id if column != 1 else ids.from_bytes(bytes(row[1]))
    assert caught.value.message_id == expected
