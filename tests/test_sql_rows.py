"""The SQL backends' rows read back as messages: a claim's bulk read checks exactly what a single read checks."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from pbuffer.backends.sql_rows import (
    ROWS_PER_INSERT,
    insert_rows,
    message_from_row,
    messages_from_seq_rows,
    row_values,
    rows_values,
)
from pbuffer.backends.tables import MESSAGES

import pbuffer
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


def stored(row: tuple[Any, ...], headed: bool) -> tuple[Any, ...]:
    """A row as sqlite stores it: blobs as bytes, and NULL in the headers column a bare row leaves out."""
    values = [bytes(value) if isinstance(value, bytearray) else value for value in row]
    return tuple(values) if headed else (*values[:3], None, *values[3:])


@pytest.mark.parametrize("which", [[0, 2], [0, 1, 2, 3], [2, 3], [1]])
def test_a_batchs_rows_are_what_single_saves_write(which: list[int]) -> None:
    # save_many's loop spells out row_values and the checksum: any difference would be a row its reader rejects.
    messages = [some_messages()[index] for index in which]
    rows, headed = rows_values(messages)
    assert headed == any(m.headers for m in messages)
    assert [stored(row, headed) for row in rows] == [row_values(m) for m in messages]
    assert [message_from_row(stored(row, headed)) for row in rows] == messages


def test_sqlite_binds_a_batchs_values_without_its_adapters() -> None:
    # CPython's sqlite3 passes bytes and None through its adapter registry (a lookup per value, a third of an
    # executemany's time); int, str and bytearray it binds as they are. A row made for sqlite holds only those,
    # but a payload over 4 KiB is bound as it is (a copy would cost more than the lookup). A call where some
    # message has headers binds NULL for those without (rare: left as it is).
    messages = some_messages()
    for rows, headed in (rows_values(messages[:1] + messages[2:3]), rows_values(messages)):
        for row in rows:
            payload = row[2]
            values = [value for index, value in enumerate(row) if index != 2 and not (headed and index == 3)]
            assert all(type(value) in (int, str, bytearray) for value in values)
            assert type(payload) is (bytes if len(payload) > 4096 else bytearray)
            assert not headed or type(row[3]) in (str, type(None))


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


@pytest.mark.parametrize("count", [2, 7, ROWS_PER_INSERT, ROWS_PER_INSERT + 1, 2 * ROWS_PER_INSERT + 37])
@pytest.mark.parametrize("headed", [False, True])
def test_a_sqlite_batch_is_stored_in_the_order_given(tmp_path: Path, count: int, headed: bool) -> None:
    # sqlite writes a batch as INSERT statements of up to ROWS_PER_INSERT rows each, the rest in powers of two
    # (sql_rows.insert_rows): the rows' seqs must ascend in the order given, across the statements, as a row per
    # statement's would.
    items = [pbuffer.Outgoing(f"m{i}".encode(), f"s.{i % 3}", {"N": str(i)} if headed and i % 2 else None)
             for i in range(count)]
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
        buf.save(b"before", subject="s.x")
        saved = buf.save_many(items)
        buf.save(b"after", subject="s.x")
        assert [m.payload for m in buf.get_all()] == [b"before", *(item.payload for item in items), b"after"]
        assert buf.get_all() == [*buf.get_all()[:1], *saved, *buf.get_all()[-1:]]
        assert buf.stats().pending == count + 2
    with closing(sqlite3.connect(tmp_path / "b.db")) as conn:
        stored_ids = [ids.from_bytes(row[0]) for row in conn.execute(f"SELECT id FROM {MESSAGES} ORDER BY seq")]
    assert stored_ids[1:-1] == [m.id for m in saved]


def test_a_sqlite_batch_that_fails_in_a_later_statement_stores_nothing(tmp_path: Path) -> None:
    # All or nothing across the statements of one batch: the last of 206 rows is refused (a trigger) in the fourth
    # statement (100, 100, 4, 2 rows), and the rows of the statements before it are gone with it.
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        buf.save(b"kept", subject="s.x")
        with closing(sqlite3.connect(path)) as conn:
            conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON {MESSAGES} WHEN NEW.subject = 's.bad' "
                         "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
            conn.commit()
        items = [pbuffer.Outgoing(b"x", "s.ok") for _ in range(2 * ROWS_PER_INSERT + 5)]
        items.append(pbuffer.Outgoing(b"x", "s.bad"))
        with pytest.raises(pbuffer.BackendError, match="refused by the test"):
            buf.save_many(items)
        assert [m.payload for m in buf.get_all()] == [b"kept"]
        assert buf.stats().pending == 1
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("DROP TRIGGER refuse")
            conn.commit()
        assert len(buf.save_many(items)) == len(items)
        assert buf.stats().pending == len(items) + 1


def test_a_batch_of_any_size_uses_few_statement_shapes() -> None:
    # Every batch size from 1 to 300 goes out in order, with at most 8 different statements in all (100 rows,
    # then powers of two), so sqlite's per-connection statement cache is not flooded by one shape per size.
    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[Any]]] = []

        def execute(self, statement: str, params: Any) -> None:
            self.calls.append((statement, list(params)))

    statement = "INSERT INTO t (a, b) VALUES (?, ?)"
    shapes: set[str] = set()
    for size in range(1, 301):
        rows = [(i, f"v{i}") for i in range(size)]
        cursor = Recorder()
        insert_rows(cursor, statement, rows)
        assert [value for _, params in cursor.calls for value in params] == [v for row in rows for v in row]
        assert all(s.count("(?, ?)") * 2 == len(params) for s, params in cursor.calls)
        shapes.update(s for s, _ in cursor.calls)
    assert len(shapes) == 8


def test_a_sqlite_batch_of_large_and_empty_payloads_spans_its_statements_intact(tmp_path: Path) -> None:
    # Payloads up to 4 KiB are bound as bytearray copies, larger ones as they are (sql_rows.rows_values): both
    # kinds, empty ones and 1 MiB ones, mixed across the statements of one batch, read back byte for byte.
    sizes = [0, 1, 4096, 4097, 1 << 20] * 21  # 105 rows: statements of 100, 4 and 1
    payloads = [bytes([index % 251]) * size for index, size in enumerate(sizes)]
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
        saved = buf.save_many(payloads, subject="s.big")
        assert [m.payload for m in buf.get_all()] == payloads
        assert [m.id for m in buf.get_all()] == [m.id for m in saved]
        assert buf.stats().pending_bytes == sum(sizes)
