"""sqlite counts new messages lazily (revision 0003): a save writes its row only; stats() adds the uncounted tail
above the mark, and a writer folds it into the counters every so often. These tests make the folds frequent and
check that every count stays exact through whatever mix of operations, processes and schema moves."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from pbuffer.backends import sql_counting

import pbuffer
from pbuffer import Buffer
from pbuffer.testing.state_machine import make_state_machine


def _mark(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT up_to_seq FROM pbuffer_counted_0004").fetchone()[0])


def _counted(path: Path) -> int:
    """What the counters alone hold as pending (without the tail)."""
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT COALESCE(SUM(pending), 0) FROM pbuffer_counters_0004").fetchone()[0])


@pytest.mark.parametrize("every", [1, 2, 5])
def test_the_state_machine_agrees_with_folds_at_any_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            every: int) -> None:
    """The conformance state machine (two buffer objects on one file, as two processes would be, each with its own
    idea of the mark) with the tail folded every ``every`` saves instead of every 1,024."""
    monkeypatch.setattr(sql_counting, "_FOLD_EVERY", every)
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
        assert _mark(path) == 0 and buf.stats().pending == 0
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
    assert pbuffer.upgrade(url) == "0004"
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
            conn.execute("CREATE TRIGGER refuse BEFORE UPDATE ON pbuffer_counted_0004 "
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
