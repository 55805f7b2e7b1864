"""sqlite counts new messages lazily (revision 0003): a save writes its row only; stats() adds the uncounted tail
above the mark, and a writer folds it into the counters every so often. Since revision 0005 the oldest rows (the
head) are counted in advance as deleted, so a pop writes its row only too. These tests make the folds and the
head's moves frequent and check that every count stays exact through whatever mix of operations, processes and
schema moves."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from pbuffer.backends import sql_counting

import pbuffer
from pbuffer import Buffer
from pbuffer.ids import new_id
from pbuffer.testing.state_machine import make_state_machine


def _mark(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT up_to_seq FROM pbuffer_counted_0005").fetchone()[0])


def _head(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT head_to_seq FROM pbuffer_counted_0005").fetchone()[0])


def _counters(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT * FROM pbuffer_counters_0005 ORDER BY subject, shard").fetchall()


def _counted(path: Path) -> int:
    """What the counters alone hold as pending (without the tail)."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(pending), 0) FROM pbuffer_counters_0005").fetchone()[0])


@pytest.mark.parametrize(("every", "head"), [(1, 1024), (2, 1024), (5, 1024), (1, 1), (2, 5), (5, 2), (1024, 3)])
def test_the_state_machine_agrees_with_folds_at_any_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            every: int, head: int) -> None:
    """The conformance state machine (two buffer objects on one file, as two processes would be, each with its own
    idea of the mark) with the tail folded every ``every`` saves instead of every 1,024, and pops moving the head
    (revision 0005) over ``head`` rows at a time."""
    monkeypatch.setattr(sql_counting, "_FOLD_EVERY", every)
    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", head)
    url = f"sqlite:///{tmp_path}/b.db"
    opened: list[Buffer] = []

    def make_empty() -> Buffer:
        buffer = pbuffer.open(url)
        opened.append(buffer)
        for dead in buffer.dead_letters():
            buffer.delete(dead.message.id)
        while buffer.pop() is not None:
            pass
        return buffer

    machine = make_state_machine(make_empty, lambda _buffer, subject: pbuffer.open(url, subject=subject))
    run_state_machine_as_test(machine, settings=settings(max_examples=40, stateful_step_count=40, deadline=None,
                                                         suppress_health_check=list(HealthCheck)))


def test_a_drained_table_starts_its_seqs_again_and_nothing_is_miscounted(tmp_path: Path) -> None:
    """sqlite gives a row max(seq) + 1, so seqs start again at 1 once the table is empty: the mark must come down
    with the rows, or new rows would pass for counted ones."""
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        buf.save_many([b"x"] * 5, subject="a")  # the first save folds: all five are counted, mark 5
        assert _mark(path) == 5 and _counted(path) == 5
        while buf.pop() is not None:
            pass
        assert _mark(path) == _head(path) == 0 and buf.stats().pending == 0 and buf.stats().deleted == 5
        buf.save_many([b"yy"] * 3, subject="a")  # seqs 1, 2, 3 again
        stats = buf.stats()
        assert (stats.pending, stats.pending_bytes) == (3, 6)
        assert buf.subject_stats()["a"].pending == 3


def test_removing_the_newest_rows_lowers_the_mark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_counting, "_FOLD_EVERY", 1_000_000)
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        saved = buf.save_many([b"m"] * 10, subject="a")  # counted, mark 10
        more = buf.save_many([b"n"] * 4, subject="b")  # the tail: 11-14
        assert (_mark(path), _counted(path)) == (10, 10)
        # Delete counted rows from the top (8-10) and tail rows: the mark follows the largest seq left (14 stays).
        assert buf.delete_many([m.id for m in saved[7:]] + [more[0].id]) == 4
        assert _mark(path) == 10 and buf.stats().pending == 10
        assert buf.delete_many([m.id for m in more[1:]]) == 3  # now 1-7 are left: the mark comes down to 7
        assert _mark(path) == 7 and buf.stats().pending == 7
        buf.save(b"o", subject="b")  # seq 8: above the mark, so in the tail
        assert buf.stats().pending == 8 and buf.subject_stats()["b"].pending == 1


def test_another_process_folding_or_draining_does_not_fool_this_one(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_counting, "_FOLD_EVERY", 3)
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as one, pbuffer.open(url) as two:
        expected = 0
        for round_ in range(20):
            one.save_many([b"a"] * (round_ % 4 + 1), subject="x")
            two.save(b"bb", subject="y")
            expected += round_ % 4 + 2
            if round_ % 5 == 4:  # the other one drains everything: the seqs start again
                while two.pop() is not None:
                    pass
                expected = 0
            elif round_ % 3 == 2:
                oldest = one.get_all(2)
                expected -= two.delete_many([m.id for m in oldest])
            assert one.stats().pending == two.stats().pending == expected == len(one)
            assert sum(s.pending for s in two.subject_stats().values()) == expected


@pytest.mark.parametrize("overflow", ["reject", "drop_oldest"])
def test_limits_count_the_tail(tmp_path: Path, overflow: str) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url, max_messages=50, overflow=overflow) as limited, pbuffer.open(url) as free:
        free.save_many([b"z"] * 30, subject="a")  # an unlimited writer leaves rows in the tail
        for number in range(40):
            try:
                limited.save(b"%d" % number, subject="a")
            except pbuffer.BufferFullError:
                assert overflow == "reject"
        assert len(limited) == 50 and limited.stats().pending == 50
        if overflow == "drop_oldest":
            assert limited.stats().dropped == 20


def test_a_downgrade_folds_the_tail_for_revision_0002(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    with pbuffer.open(url) as buf:
        monkeypatch.setattr(sql_counting, "_FOLD_EVERY", 1)  # the first save is folded...
        buf.save(b"first", subject="a")
        monkeypatch.setattr(sql_counting, "_FOLD_EVERY", 1_000_000)  # ...the next six stay in the tail
        buf.save_many([b"tail"] * 6, subject="b")
        assert _counted(path) == 1
    assert pbuffer.downgrade(url, "0002") == "0002"
    with sqlite3.connect(path) as conn:  # revision 0002's counters count every row
        rows = dict(conn.execute("SELECT subject, SUM(pending) FROM pbuffer_counters GROUP BY subject").fetchall())
    assert rows == {"": 0, "a": 1, "b": 6}
    assert pbuffer.upgrade(url) == "0005"
    with pbuffer.open(url) as buf:
        assert buf.stats().pending == 7 and _mark(path) == 7


def test_a_save_stands_when_the_fold_after_it_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone save commits by its INSERT alone; the fold due after it runs in a transaction of its own. When that
    fold fails (here a trigger refuses to move the mark; a full disk would too), the committed save must not be
    reported as failed, and every count stays exact: the row waits in the uncounted tail for a later fold."""
    monkeypatch.setattr(sql_counting, "_FOLD_EVERY", 1)  # every save folds
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        buf.save(b"folded", subject="a")
        assert _counted(path) == 1
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON pbuffer_counted_0005 "
                         "BEGIN SELECT RAISE(ABORT, 'no fold'); END")
        saved = [buf.save(b"kept", subject="a"), buf.save(b"kept too", subject="b")]
        assert [m.id for m in buf.get_all()][1:] == [m.id for m in saved]
        assert _counted(path) == 1  # the two are in the tail, not lost from the counts
        assert buf.stats().pending == 3
        assert {s: c.pending for s, c in buf.subject_stats().items()} == {"a": 2, "b": 1}
        with sqlite3.connect(path) as conn:
            conn.execute("DROP TRIGGER refuse")
        buf.save(b"after", subject="b")
        assert _counted(path) == 4 and _mark(path) == 4
        assert buf.stats().pending == 4


# ------------------------------------------------------------------------------ the head (revision 0005)

def test_a_pop_inside_the_head_writes_no_counters_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the head: once a pop moved it over the oldest rows, the next pops delete their row and write
    nothing else; the counts stay exact all the way."""
    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", 4)
    monkeypatch.setattr(sql_counting, "_FOLD_EVERY", 1)
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        buf.save_many([b"x"] * 6, subject="a")
        buf.save_many([b"yy"] * 4, subject="b")  # counted (each save folds): seqs 1-10, mark 10
        assert buf.pop().payload == b"x"  # moves the head over seqs 1-4
        assert _head(path) == 4
        before = _counters(path)
        for left in (8, 7, 6):  # seqs 2-4: inside the head
            assert buf.pop().payload == b"x"
            stats = buf.stats()
            assert (stats.pending, stats.deleted) == (left, 10 - left)
        assert _counters(path) == before, "a pop inside the head wrote the counters"
        assert buf.pop().payload == b"x"  # seq 5: past the head, which moves over 5-8 (both subjects)
        assert _head(path) == 8
        assert {name: (s.pending, s.pending_bytes, s.deleted) for name, s in buf.subject_stats().items()} == {
            "a": (1, 1, 5), "b": (4, 8, 0)}


@pytest.mark.parametrize("removal", ["delete_many", "dead_letter", "drop_oldest", "pop_then_requeue", "expire"])
def test_every_other_removal_of_a_head_row_counts_it_where_it_went(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   removal: str) -> None:
    """A relay's delete, a dead letter, the limits' drops and expiry of a row in the head: counted once, where it
    went (a head row was counted as deleted in advance: deleted it stays, anything else it leaves deleted for),
    and the head stays, so the pops after them write no counters row either."""
    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", 1_000)
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    with pbuffer.open(url) as buf, pbuffer.open(url, max_messages=8, overflow="drop_oldest") as limited, \
            pbuffer.open(url, ttl=0.05) as expiring:  # only this one expires what it finds
        saved = buf.save_many([b"m%d" % n for n in range(10)], subject="a")
        assert buf.pop().id == saved[0].id and _head(path) == 10  # every row is in the head now
        if removal == "delete_many":
            assert buf.delete_many([saved[1].id, saved[5].id]) == 2
            expected = (7, 0, 0, 0, 3)
        elif removal == "dead_letter":
            assert buf.mark_dead(saved[1].id, "refused") is True
            expected = (8, 1, 0, 0, 1)
        elif removal == "drop_oldest":
            limited.save(b"new", subject="a")  # 10 pending: two dropped to make room for it
            expected = (8, 0, 2, 0, 1)
        elif removal == "expire":
            time.sleep(0.1)  # every message is older than expiring's ttl
            assert expiring.expire() == 9
            expected = (0, 0, 0, 9, 1)
        else:
            assert buf.mark_dead(saved[1].id, "refused") is True
            assert buf.requeue(saved[1].id) is True  # back at the end, above both marks
            expected = (9, 0, 0, 0, 1)
        stats = buf.stats()
        assert (stats.pending, stats.dead, stats.dropped, stats.expired, stats.deleted) == expected
        assert stats.pending == len(buf) and stats.pending_bytes == sum(len(m.payload) for m in buf.get_all())
        assert buf.subject_stats()["a"] == pbuffer.SubjectStats(stats.pending, stats.pending_bytes, stats.dead,
                                                                stats.dead_bytes, stats.dropped, stats.expired,
                                                                stats.deleted)
        before = _counters(path)
        if removal not in ("pop_then_requeue", "expire"):
            assert buf.pop() is not None  # still inside the head
            assert _counters(path) == before
        while buf.pop() is not None:
            pass
        stats = buf.stats()
        assert (stats.pending, stats.pending_bytes, stats.deleted) == (0, 0, expected[4] + expected[0])


def test_a_scoped_popper_passing_other_subjects_keeps_the_head_small(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Pops that pass rows they do not take (another subject's, for a scoped buffer; claimed ones) must not pile
    them up in the head, which every stats() adds up: the head moves only once it holds no row, over at most
    _HEAD_EVERY rows; while it holds some, a pop counts itself out of pending as before."""
    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", 8)
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    with pbuffer.open(url) as buf, pbuffer.open(url, subject="b") as only_b:
        buf.save_many([b"a"] * 30, subject="a")  # nobody takes these
        for _ in range(10):
            buf.save(b"a", subject="a")
            buf.save(b"bb", subject="b")
        popped = 0
        while only_b.pop() is not None:
            popped += 1
            with sqlite3.connect(path) as conn:
                in_head = conn.execute("SELECT COUNT(*) FROM pbuffer_messages_0005 WHERE seq <= "
                                       "(SELECT head_to_seq FROM pbuffer_counted_0005)").fetchone()[0]
            assert in_head <= 8
            assert only_b.stats().pending == 10 - popped and buf.stats().pending == 50 - popped
        assert popped == 10
        assert buf.subject_stats()["a"] == pbuffer.SubjectStats(40, 40, 0, 0, 0, 0, 0)
        assert buf.subject_stats()["b"] == pbuffer.SubjectStats(0, 0, 0, 0, 0, 0, 10)


def test_an_outbox_save_that_drops_while_a_head_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbox runs the limits' statements through the caller's connection (text(), which takes named
    parameters only): a drop_oldest save there drops a head row and counts it out of deleted into dropped (the
    first version of the head failed here, found by trying to break it)."""
    import sqlalchemy as sa

    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", 1_000)
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    # serialize_writes=False: the outbox is refused on a sqlite library with the WAL-reset bug otherwise.
    with pbuffer.open(url, max_messages=5, overflow="drop_oldest", serialize_writes=False) as buf:
        buf.save_many([b"x%d" % n for n in range(5)], subject="orders")
        assert buf.pop() is not None and _head(path) == 5
        buf.save(b"x5", subject="orders")  # full again
        with engine.begin() as conn:
            buf.save(b"order", subject="orders", connection=conn)
        stats = buf.stats()
        assert [m.payload for m in buf.get_all()] == [b"x2", b"x3", b"x4", b"x5", b"order"]
        assert (stats.pending, stats.dropped, stats.deleted) == (5, 1, 1)
    engine.dispose()


def test_an_outbox_save_reads_the_limits_under_the_write_lock(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """pysqlite begins the caller's transaction at its first write: an outbox save that is the transaction's first
    statement read the counts and chose what to drop outside it, and another process could pop or delete in
    between (found by trying to break it). It now takes the write lock before it reads."""
    import sqlalchemy as sa
    from pbuffer.backends.sql import SQLBuffer

    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    engine = sa.create_engine(url)
    seen: list[bool] = []
    make_room = SQLBuffer._make_room

    def watched(self: SQLBuffer, cursor: object, messages: list[pbuffer.Message]) -> None:
        other = sqlite3.connect(path, timeout=0)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
            seen.append(False)  # another writer could have come in here
        except sqlite3.OperationalError:
            seen.append(True)
        finally:
            other.close()
        make_room(self, cursor, messages)

    monkeypatch.setattr(SQLBuffer, "_make_room", watched)
    with pbuffer.open(url, max_messages=3, overflow="drop_oldest", serialize_writes=False) as buf:
        with engine.begin() as conn:
            buf.save(b"first", subject="a", connection=conn)
        assert seen == [True]
    engine.dispose()


def test_claimed_rows_the_pops_pass_enter_the_head_and_count_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A relay holds the oldest rows (claimed); pops take the rows behind them, and the head moves over the
    claimed ones too. The relay's delete of what it claimed then counts them once, as deleted."""
    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", 1_000)
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        saved = buf.save_many([b"%d" % n for n in range(8)], subject="a")
        claimed = buf.claim(3, owner=new_id(), lease=60.0)
        assert [m.id for m in claimed] == [m.id for m in saved[:3]]
        assert buf.pop().id == saved[3].id and _head(path) == 8
        assert buf.stats().pending == 7 and buf.stats().deleted == 1
        assert buf.delete_many([m.id for m in claimed]) == 3
        stats = buf.stats()
        assert (stats.pending, stats.deleted, _head(path)) == (4, 4, 8)  # the head stays
        assert [m.id for m in buf.get_all()] == [m.id for m in saved[4:]]


def test_a_downgrade_gives_the_head_back_to_the_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Revision 0004 knows no head: the downgrade moves its rows back to pending and out of deleted, so the old
    counters are exact, and an upgrade again starts with an empty head."""
    monkeypatch.setattr(sql_counting, "_HEAD_EVERY", 1_000)
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    with pbuffer.open(url) as buf:
        buf.save_many([b"aa"] * 5, subject="a")  # folded: counted, mark 5
        buf.save_many([b"b"] * 3, subject="b")  # the uncounted tail
        assert buf.pop() is not None and _head(path) == 5  # the head stops at the mark
    assert pbuffer.downgrade(url, "0004") == "0004"
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT subject, pending, pending_bytes, deleted FROM pbuffer_counters_0004 "
                            "WHERE shard = 0 AND subject != '' ORDER BY subject").fetchall()
        assert conn.execute("SELECT up_to_seq FROM pbuffer_counted_0004").fetchall() == [(5,)]
    assert rows == [("a", 4, 8, 1)]  # b's rows are still the tail
    assert pbuffer.upgrade(url) == "0005"
    with pbuffer.open(url) as buf:
        assert _head(path) == 0
        stats = buf.stats()
        assert (stats.pending, stats.pending_bytes, stats.deleted) == (7, 11, 1)
