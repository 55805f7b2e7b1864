"""pbuffer watch: what a frame says is what the counters say, rendered the same at a fixed width; claims are read
without writing; the command never creates or upgrades a buffer and follows other processes' saves."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pbuffer.backends import versioning
from rich.console import Console

import pbuffer
from pbuffer import ids
from pbuffer.cli import main
from pbuffer.cli.watch import Claims, Sample, Watch, plain, read_claims, render, sparkline, take_sample
from pbuffer.limits import BufferStats, SubjectStats

PBUFFER = [sys.executable, "-m", "pbuffer.cli"]


def subject(pending: int, dead: int = 0, dropped: int = 0, expired: int = 0) -> SubjectStats:
    return SubjectStats(pending, pending * 10, dead, dead * 10, dropped, expired)


def sample(at: float, per_subject: dict[str, SubjectStats], claims: Claims | None = None) -> Sample:
    counts = per_subject.values()
    total = BufferStats(sum(s.pending for s in counts), sum(s.pending_bytes for s in counts),
                        sum(s.dead for s in counts), sum(s.dead_bytes for s in counts), 5.0,
                        sum(s.dropped for s in counts), sum(s.expired for s in counts))
    return Sample(at, total, per_subject, claims)


# ------------------------------------------------------------------------------------------------ the numbers

def test_rates_are_the_net_change_of_pending_dead_dropped_and_expired() -> None:
    watch = Watch("sqlite:///b.db")
    watch.add(sample(0.0, {"a": subject(100), "b": subject(0)}))
    # +20 saved on a; on b, 5 saved and 5 dead-lettered (the sum moves by the saves only).
    watch.add(sample(1.0, {"a": subject(120), "b": subject(0, dead=5)}))
    # a: 10 dropped by the limits (no change) and 30 sent; b: 5 expired out of... nothing pending: unchanged.
    watch.add(sample(2.0, {"a": subject(80, dropped=10), "b": subject(0, dead=5)}))
    frame = watch.frame()
    assert frame.span == 2.0
    assert frame.saved_trend == (25.0, 0.0) and frame.sent_trend == (0.0, 30.0)
    assert (frame.saved, frame.sent) == (12.5, 15.0)
    rows = {row.subject: row for row in frame.subjects}
    assert (rows["a"].saved, rows["a"].sent) == (10.0, 15.0)
    assert (rows["b"].saved, rows["b"].sent) == (2.5, 0.0)
    assert rows["a"].pending_trend == (100, 120, 80)
    assert [row.subject for row in frame.subjects] == ["a", "b"]  # most pending first


@pytest.mark.parametrize("scheme", ["sqlite", "memory"])
def test_saves_and_sends_at_the_same_rate_are_both_seen(scheme: str, tmp_path: Path) -> None:
    """A healthy pipeline's steady state: as many saves as deletions between two reads (net rates showed 0/s for
    both). The counters' deleted totals tell them apart, for delete_many (a relay) and pop alike."""
    url = f"sqlite:///{tmp_path}/b.db" if scheme == "sqlite" else "memory://"
    with pbuffer.open(url) as buf:
        watch = Watch(url)
        buf.save_many([b"x"] * 200, subject="a")
        buf.save_many([b"x"] * 10, subject="b")
        watch.add(dataclasses.replace(take_sample(buf), at=0.0))
        for second in (1.0, 2.0, 3.0):
            oldest = [m.id for m in buf.get_all() if m.subject == "a"][:200]
            buf.save_many([b"y"] * 200, subject="a")
            assert buf.delete_many(oldest) == 200
            buf.save(b"z", subject="b")
            assert buf.pop() is not None and buf.pop() is not None  # b's: pop takes the oldest, and a's are newer
            watch.add(dataclasses.replace(take_sample(buf), at=second))
    frame = watch.frame()
    assert not frame.rates_are_net and frame.as_dict()["rates_are_net"] is False
    rows = {row.subject: row for row in frame.subjects}
    assert (rows["a"].saved, rows["a"].sent) == (200.0, 200.0)
    assert (rows["b"].saved, rows["b"].sent) == (1.0, 2.0)
    assert (frame.saved, frame.sent) == (201.0, 202.0)
    assert frame.saved_trend == (201.0,) * 3 and frame.sent_trend == (202.0,) * 3
    assert "net of each other" not in plain(frame)


def test_one_sample_has_no_rates_and_the_window_keeps_a_minute() -> None:
    watch = Watch("memory://", window=60.0)
    watch.add(sample(0.0, {"a": subject(1)}))
    frame = watch.frame()
    assert (frame.saved, frame.sent, frame.span) == (None, None, 0.0)
    assert "rates: saved -, sent -" in plain(frame)
    for second in range(1, 200):
        watch.add(sample(float(second), {"a": subject(1 + second)}))
    frame = watch.frame()
    assert frame.span == 60.0 and len(frame.saved_trend) == 60 and frame.saved == 1.0


def test_a_subject_that_appears_counts_from_nothing() -> None:
    watch = Watch("memory://")
    watch.add(sample(0.0, {}))
    watch.add(sample(2.0, {"new.subject": subject(8)}))
    row = watch.frame().subjects[0]
    assert (row.subject, row.saved, row.sent, row.pending_trend) == ("new.subject", 4.0, 0.0, (0, 8))


def test_sparkline_scales_pads_and_buckets() -> None:
    assert sparkline([], 5) == "     "
    assert sparkline([0, 0], 4) == "    "
    assert sparkline([0, 1, 2, 4, 8], 5) == " ▁▂▄█"
    assert sparkline([8, 8], 4) == "  ██"  # the newest at the right end
    assert sparkline([1, 1, 0, 0, 8, 8], 3) == "▁ █"  # buckets of two, averaged
    assert len(sparkline(list(range(1000)), 60)) == 60


def test_a_frame_from_a_real_buffer_follows_its_counters(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url, max_messages=50, overflow="drop_oldest") as buf:
        watch = Watch(url)
        first = take_sample(buf)
        watch.add(dataclasses.replace(first, at=0.0))
        saved = buf.save_many([b"x" * 10] * 40, subject="orders.created")
        buf.mark_dead(saved[0].id, "bad")
        buf.requeue(saved[0].id)
        buf.mark_dead(saved[1].id, "bad")
        watch.add(dataclasses.replace(take_sample(buf), at=1.0))
        buf.save_many([b"y" * 5] * 20, subject="orders.shipped")  # 59 pending: the 9 oldest are dropped
        assert buf.delete_many([m.id for m in saved[20:35]]) == 15
        watch.add(dataclasses.replace(take_sample(buf), at=2.0))
    frame = watch.frame()
    assert frame.saved_trend == (40.0, 20.0)  # per subject: 20 saved on one, 15 deleted on the other
    assert frame.sent_trend == (0.0, 15.0)
    assert (frame.stats.pending, frame.stats.dead, frame.stats.dropped) == (35, 1, 9)
    assert frame.claims == Claims(0, 0, None, 10_000)
    data = frame.as_dict()
    assert data["subjects"]["orders.created"] == {
        "pending": 15, "bytes": 150, "dead": 1, "dead_bytes": 10, "dropped": 9, "expired": 0, "deleted": 15,
        "saved_per_second": 20.0, "sent_per_second": 7.5}
    assert json.loads(json.dumps(data)) == data


# ------------------------------------------------------------------------------------------------- rendering

def frame_for_rendering() -> Watch:
    watch = Watch("sqlite:////srv/orders[/].db")
    claims = Claims(held=500, owners=2, ends_in=27.4, looked_at=10_000)
    for second in range(61):
        watch.add(sample(float(second), {
            "orders.created": subject(1000 + 10 * second),
            "orders.[bold]x[/bold]": subject(max(0, 300 - 5 * second), dead=2),
            "idle.drained": subject(0)}, claims))
    return watch


def rendered(width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, height=40, color_system=None, force_terminal=True, legacy_windows=False).print(
        render(frame_for_rendering().frame()))
    return out.getvalue()


def test_a_frame_renders_within_a_fixed_width() -> None:
    text = rendered(150)
    lines = text.splitlines()
    assert all(len(line) <= 150 for line in lines)
    assert lines[0] == "sqlite:////srv/orders[/].db"
    assert lines[1] == ("1,600 pending (16,000 bytes) · 2 dead (20 bytes) · oldest 5.0 s · 0 dropped · 0 expired")
    assert lines[2] == ("claims: 500 message(s) held by 2 relay(s) among the oldest 10,000 messages, last lease ends "
                        "in 27 s")
    pending = next(line for line in lines if line.startswith("pending "))
    assert "1,600 (peak 1,600)" in pending and "█" in pending
    assert any(line.startswith("saved ") and line.endswith("10.0/s") for line in lines)
    assert any(line.startswith("sent ") and line.endswith("5.0/s") for line in lines)
    # Text from the buffer is shown as written, never read as markup; a drained, idle subject has no row.
    row = next(line for line in lines if "orders.[bold]x[/bold]" in line)
    assert "5.0/s" in row and "idle.drained" not in text
    assert text == rendered(150)  # the same frame renders the same


def test_a_narrow_terminal_still_shows_the_numbers() -> None:
    text = rendered(80)
    assert "1,600 pending" in text and "claims: 500" in text


def test_plain_frames_are_tab_separated_lines() -> None:
    text = plain(frame_for_rendering().frame())
    lines = text.splitlines()
    assert lines[0].startswith("sqlite:////srv/orders[/].db: 1,600 pending (16,000 bytes)")
    assert lines[1] == "rates: saved 10.0/s, sent 5.0/s over the last 60 s (net of each other)"
    assert lines[3] == "subject\tpending\tbytes\tdead\tdropped\texpired\tsaved\tsent"
    assert lines[4:] == ["orders.created\t1,600\t16,000\t0\t0\t0\t10.0/s\t0.0/s",
                         "orders.[bold]x[/bold]\t0\t0\t2\t0\t0\t0.0/s\t5.0/s"]


def test_unknown_and_absent_claims_say_so() -> None:
    watch = Watch("x://")
    watch.add(sample(0.0, {}, None))
    assert "claims: unknown" in plain(watch.frame())
    watch.add(sample(1.0, {}, Claims(0, 0, None, 10_000)))
    assert "claims: none live among the oldest 10,000 messages\n" in plain(watch.frame())
    assert watch.frame().as_dict()["claims"] == {"held": 0, "relays": 0, "lease_ends_in_seconds": None,
                                                 "looked_at": 10_000}
    watch.add(sample(2.0, {}, Claims(0, 0, None, None)))  # memory://: every claim was looked at
    assert "claims: none live (no relay is publishing)\n" in plain(watch.frame())


# ------------------------------------------------------------------------------------------------------ claims

def test_claims_are_read_on_every_shipped_backend(store_url: str) -> None:
    with pbuffer.open(store_url) as buf:
        buf.save_many([b"m"] * 30, subject="a.b")
        assert read_claims(buf) == Claims(0, 0, None, 10_000)
        first, second = ids.new_id(), ids.new_id()
        assert len(buf.claim(10, owner=first, lease=30)) == 10
        assert len(buf.claim(5, owner=second, lease=60)) == 5
        claims = read_claims(buf)
        assert claims is not None and (claims.held, claims.owners) == (15, 2)
        assert claims.ends_in is not None and 50 < claims.ends_in <= 60
        buf.release([m.id for m in buf.get_all(10)], owner=first)
        buf.claim(3, owner=first, lease=0.05)  # a lease that runs out: no longer live
        time.sleep(0.2)
        claims = read_claims(buf)
        assert claims is not None and (claims.held, claims.owners) == (5, 1)
        buf.delete_many([m.id for m in buf.get_all()])
        claims = read_claims(buf)
        assert claims is not None and claims.held == 0


def test_claims_beyond_the_window_are_not_counted_and_it_says_where_it_looked(tmp_path: Path) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
        saved = buf.save_many([b"m"] * 30, subject="a.b")
        buf.claim(5, owner=ids.new_id(), lease=30, after=saved[19].id)  # the 21st to 25th oldest
        assert read_claims(buf, window=20) == Claims(0, 0, None, 20)
        claims = read_claims(buf, window=25)
        assert claims is not None and (claims.held, claims.looked_at) == (5, 25)


def test_reading_claims_and_counters_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        buf.save_many([b"m"] * 100, subject="a.b")
        buf.claim(10, owner=ids.new_id(), lease=30)
        # The database and its log; not the -shm, the WAL index, where every reader takes a read mark.
        files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith("-shm")}
        for _ in range(3):
            take_sample(buf)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith("-shm")} == files


def test_a_scoped_buffer_sees_its_own_subject_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save_many([b"m"] * 10, subject="a.b")
        buf.save_many([b"m"] * 10, subject="c.d")
        buf.claim(15, owner=ids.new_id(), lease=30)
    with pbuffer.open(url, subject="c.d") as scoped:
        claims = read_claims(scoped)
        assert claims is not None and claims.held == 5
        assert list(take_sample(scoped).subjects) == ["c.d"]


# ----------------------------------------------------------------------------------------------------- command

def test_watch_once_on_a_pipe_prints_one_plain_frame(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save_many([b"hello"] * 3, subject="orders.created")
        buf.claim(2, owner=ids.new_id(), lease=30)
    run = subprocess.run([*PBUFFER, "watch", "--url", url, "--once", "--interval", "0.1"], capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{url}: 3 pending (15 bytes), 0 dead (0 bytes); oldest ")
    assert lines[1].startswith("rates: saved 0.0/s, sent 0.0/s over the last 0.")
    assert lines[2].startswith("claims: 2 message(s) held by 1 relay(s) among the oldest 10,000 messages")
    assert lines[3:] == ["subject\tpending\tbytes\tdead\tdropped\texpired\tsaved\tsent",
                         "orders.created\t3\t15\t0\t0\t0\t0.0/s\t0.0/s"]
    run = subprocess.run([*PBUFFER, "watch", "--url", url, "--json", "--interval", "0.1"], capture_output=True,
                         text=True, timeout=60, check=False)
    data = json.loads(run.stdout)
    assert (data["pending"], data["claims"]["held"], data["subjects"]["orders.created"]["bytes"]) == (3, 2, 15)


def test_watch_never_creates_or_upgrades_a_buffer(tmp_path: Path) -> None:
    missing = tmp_path / "nothing" / "here.db"
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (missing, empty):
        result = CliRunner().invoke(main, ["watch", "--once", "--url", f"sqlite:///{path}"])
        assert result.exit_code == 1 and "no buffer at" in result.output
    assert not (tmp_path / "nothing").exists() and empty.read_bytes() == b""
    old = f"sqlite:///{tmp_path}/old.db"
    pbuffer.open(old).close()
    first = versioning.known_revisions()[0]
    pbuffer.downgrade(old, first)
    before = (tmp_path / "old.db").read_bytes()
    result = CliRunner().invoke(main, ["watch", "--once", "--url", old])
    assert result.exit_code == 1 and "pbuffer db upgrade --url" in result.output
    assert (tmp_path / "old.db").read_bytes() == before and pbuffer.current(old) == first


def test_watch_follows_saves_and_drains_of_other_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    pbuffer.open(url).close()
    process = subprocess.Popen([*PBUFFER, "watch", "--url", url, "--interval", "0.1"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        seen: list[str] = []

        def until(text: str) -> None:
            deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
            while time.monotonic() < deadline:
                line = process.stdout.readline()  # type: ignore[union-attr]
                assert line, process.stderr.read() if process.stderr else ""
                seen.append(line)
                if text in line:
                    return
            raise AssertionError(f"never saw {text!r}")

        until(": 0 pending")
        with pbuffer.open(url) as buf:
            saved = buf.save_many([b"x"] * 25, subject="orders.created")
        until(": 25 pending (25 bytes)")
        until("orders.created\t25\t25\t")
        with pbuffer.open(url) as buf:
            buf.delete_many([m.id for m in saved[:20]])
        until(": 5 pending (5 bytes)")
    finally:
        process.terminate()
        process.wait(timeout=30)
    frames = "".join(seen).split("\n\n")
    assert len(frames) >= 3 and all(frame.strip().splitlines()[0].startswith(url) for frame in frames if frame.strip())


@pytest.mark.parametrize("interval", ["0", "-1", "nan"])
def test_watch_refuses_a_bad_interval(interval: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["watch", "--url", f"sqlite:///{tmp_path}/b.db", "--interval", interval])
    assert result.exit_code == 2 and not (tmp_path / "b.db").exists()
