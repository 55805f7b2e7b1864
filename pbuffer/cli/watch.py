"""``pbuffer watch``: a buffer's counters, refreshed, with the last minute's trend.

Each refresh reads :meth:`Buffer.stats`, :meth:`Buffer.subject_stats` and the claims at the head of the queue: all
from counters or an index, never a walk over the messages, so it costs the same on a buffer of ten messages or a
million, and it runs beside producers and relays in other processes.

The rates. The counters hold, per subject, the messages pending and dead and the totals dropped, expired and deleted
(a relay's delete after the PubAck, ``pop``, ``purge``; schema revision 0004 on). Every message saved is in exactly
one of those five, so between two reads their sum grows by the saves, and ``deleted`` by the deletions: ``saved``
and ``sent`` are those changes per second, per subject, exact even while both sides run at the same rate. A backend
that does not count deletions (``Buffer.counts_deletions`` false: a third-party backend on the contract's defaults)
gets net rates instead: the change of ``pending + dead + dropped + expired``, shown as ``saved`` when positive and
as ``sent`` when negative, exact only while the other side is idle (``rates_are_net`` in ``--json``).

Claims come from :meth:`Buffer.claim_stats`: the live ones among the oldest pending messages, where relays claim; a
backend that cannot tell returns ``None`` (shown as unknown).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ..buffer import Buffer
from ..limits import BufferStats, SubjectStats

__all__ = ["CLAIM_WINDOW", "Claims", "Frame", "Sample", "Watch", "plain", "read_claims", "render", "sparkline",
           "take_sample"]

#: How many of the oldest pending messages :func:`read_claims` looks at: a relay claims from the
#: head of the queue (at most two windows each), so a live claim is found there, and the read stays an index range.
CLAIM_WINDOW = 10_000
#: Seconds of history the rates and sparklines cover.
WINDOW = 60.0
_BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True, slots=True)
class Claims:
    """Live claims: ``held`` messages claimed by ``owners`` distinct relays, the last lease ending in ``ends_in``
    seconds. ``looked_at``: how many of the oldest pending messages were looked at (``None``: all of them)."""

    held: int
    owners: int
    ends_in: float | None
    looked_at: int | None


@dataclass(frozen=True, slots=True)
class Sample:
    """One read of a buffer: when (``time.monotonic()``), its totals, its subjects, its claims (``None``: unknown)."""

    at: float
    stats: BufferStats
    subjects: Mapping[str, SubjectStats]
    claims: Claims | None
    #: Whether the backend counts deletions (``stats().deleted``): exact rates; otherwise net ones.
    counts_deletions: bool = False


def read_claims(buf: Buffer, *, window: int = CLAIM_WINDOW) -> Claims | None:
    """The live claims among the ``window`` oldest pending messages of ``buf`` (:meth:`Buffer.claim_stats`), or
    ``None`` when its backend cannot tell."""
    stats = buf.claim_stats(window)
    if stats is None:
        return None
    now_us = time.time_ns() // 1000
    ends_in = None if stats.until_us is None else max(0.0, (stats.until_us - now_us) / 1e6)
    return Claims(stats.held, stats.owners, ends_in, window)


def take_sample(buf: Buffer, *, claims: bool = True) -> Sample:
    """Read ``buf`` once: counters, subjects and (unless ``claims`` is false) the claims at the head."""
    at = time.monotonic()
    return Sample(at, buf.stats(), buf.subject_stats(), read_claims(buf) if claims else None,
                  type(buf).counts_deletions)


# --------------------------------------------------------------------------------------------------- the frame

@dataclass(frozen=True, slots=True)
class SubjectRow:
    """One subject in a frame; rates are per second over the frame's span (see the module's docstring)."""

    subject: str
    stats: SubjectStats
    saved: float | None
    sent: float | None
    pending_trend: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Frame:
    """What one refresh shows: the newest sample, and the rates and trends over the samples before it."""

    url: str
    stats: BufferStats
    claims: Claims | None
    span: float  # seconds between the oldest and the newest sample (0: one sample, no rates)
    saved: float | None
    sent: float | None
    saved_trend: tuple[float, ...]
    sent_trend: tuple[float, ...]
    pending_trend: tuple[int, ...]
    subjects: tuple[SubjectRow, ...]
    rates_are_net: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The frame as JSON: numbers, not text (the CLI's ``watch --json``)."""
        s = self.stats
        claims = None if self.claims is None else {
            "held": self.claims.held, "relays": self.claims.owners,
            "lease_ends_in_seconds": None if self.claims.ends_in is None else round(self.claims.ends_in, 3),
            "looked_at": self.claims.looked_at}
        return {
            "url": self.url, "pending": s.pending, "bytes": s.pending_bytes, "dead": s.dead, "dead_bytes": s.dead_bytes,
            "oldest_age_seconds": None if s.oldest_age is None else round(s.oldest_age, 3),
            "dropped": s.dropped, "expired": s.expired, "claims": claims, "span_seconds": round(self.span, 3),
            "deleted": s.deleted, "saved_per_second": _round(self.saved), "sent_per_second": _round(self.sent),
            "rates_are_net": self.rates_are_net,
            "subjects": {row.subject: {"pending": row.stats.pending, "bytes": row.stats.pending_bytes,
                                       "dead": row.stats.dead, "dead_bytes": row.stats.dead_bytes,
                                       "dropped": row.stats.dropped, "expired": row.stats.expired,
                                       "deleted": row.stats.deleted, "saved_per_second": _round(row.saved),
                                       "sent_per_second": _round(row.sent)}
                         for row in self.subjects},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _level(stats: SubjectStats) -> int:
    """pending + dead + dropped + expired: changes only by saves (up) and deletions (down)."""
    return stats.pending + stats.dead + stats.dropped + stats.expired


def _exact_series(subjects: Sequence[SubjectStats], times: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per interval: saves (the growth of every message ever saved: level + deleted) and deletions, per second.
    A popped message found expired moves from deleted to expired, so a count can step back by one: never below 0."""
    saved, sent = [], []
    for i in range(1, len(subjects)):
        seconds = max(times[i] - times[i - 1], 1e-6)
        before, after = subjects[i - 1], subjects[i]
        saved.append(max((_level(after) + after.deleted - _level(before) - before.deleted) / seconds, 0.0))
        sent.append(max((after.deleted - before.deleted) / seconds, 0.0))
    return saved, sent


_NOTHING = SubjectStats(0, 0, 0, 0, 0, 0, 0)


class Watch:
    """The samples of the last ``window`` seconds of one buffer, and the frame they make."""

    def __init__(self, url: str, *, window: float = WINDOW) -> None:
        self.url = url
        self.window = window
        self.samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)
        # Keep one sample at or before the window's start, so the rates cover the whole window.
        while len(self.samples) > 2 and sample.at - self.samples[1].at >= self.window:
            self.samples.popleft()

    def frame(self) -> Frame:
        if not self.samples:
            raise ValueError("no sample yet")
        samples = list(self.samples)
        newest = samples[-1]
        span = newest.at - samples[0].at
        times = [s.at for s in samples]
        # The totals add up each subject's net change: one subject's saves do not hide another's sends.
        saved = [0.0] * (len(samples) - 1)
        sent = [0.0] * (len(samples) - 1)
        rows = []
        net = not all(s.counts_deletions for s in samples)
        for subject in sorted({name for s in samples for name in s.subjects}):
            seen = [s.subjects.get(subject, _NOTHING) for s in samples]
            sub_saved, sub_sent = _net_series([_level(s) for s in seen], times) if net else _exact_series(seen, times)
            saved = [a + b for a, b in zip(saved, sub_saved, strict=True)]
            sent = [a + b for a, b in zip(sent, sub_sent, strict=True)]
            rows.append(SubjectRow(subject, newest.subjects.get(subject, _NOTHING), _rate(sub_saved, span),
                                   _rate(sub_sent, span),
                                   tuple(s.subjects.get(subject, _NOTHING).pending for s in samples)))
        rows.sort(key=lambda row: (-row.stats.pending, -row.stats.dead, row.subject))
        return Frame(self.url, newest.stats, newest.claims, span, _rate(saved, span), _rate(sent, span),
                     tuple(saved), tuple(sent), tuple(s.stats.pending for s in samples), tuple(rows), net)


def _net_series(levels: Sequence[int], times: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per interval: (saves beyond deletions, deletions beyond saves), per second."""
    saved, sent = [], []
    for i in range(1, len(levels)):
        change = (levels[i] - levels[i - 1]) / max(times[i] - times[i - 1], 1e-6)
        saved.append(max(change, 0.0))
        sent.append(max(-change, 0.0))
    return saved, sent


def _rate(per_interval: Sequence[float], span: float) -> float | None:
    """The mean rate over ``span``, or ``None`` with fewer than two samples."""
    return None if not per_interval or span <= 0 else sum(per_interval) / len(per_interval)


def sparkline(values: Sequence[float], width: int) -> str:
    """``values`` as one line of block characters, scaled from 0 to their maximum; 0 is a blank.

    More values than ``width`` are averaged in ``width`` buckets (oldest first); fewer are padded with blanks on
    the left, so the newest is always at the right end.
    """
    if width <= 0:
        return ""
    if len(values) > width:
        buckets = [values[i * len(values) // width:(i + 1) * len(values) // width] for i in range(width)]
        values = [sum(bucket) / len(bucket) for bucket in buckets]
    top = max(values, default=0)
    # A value in (k/8, (k+1)/8] of the top gets the k-th block: the top is a full block, any value above 0 shows.
    chars = [" " if v <= 0 or top <= 0 else _BLOCKS[max(0, math.ceil(v / top * len(_BLOCKS)) - 1)] for v in values]
    return " " * (width - len(chars)) + "".join(chars)


# ---------------------------------------------------------------------------------------------------- rendering

def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.1f} s"


def _per_s(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:,.1f}/s"


def _claims_text(claims: Claims | None) -> str:
    if claims is None:
        return "claims: unknown (this backend gives no way to read them)"
    where = "" if claims.looked_at is None else f" among the oldest {claims.looked_at:,} messages"
    if not claims.held:
        # Only a look at every pending message can say that no relay is publishing at all.
        return f"claims: none live{where}" if where else "claims: none live (no relay is publishing)"
    ends = "" if claims.ends_in is None else f", last lease ends in {claims.ends_in:,.0f} s"
    return f"claims: {claims.held:,} message(s) held by {claims.owners:,} relay(s){where}{ends}"


def _summary(frame: Frame) -> str:
    s = frame.stats
    return (f"{frame.url}: {s.pending:,} pending ({s.pending_bytes:,} bytes), {s.dead:,} dead "
            f"({s.dead_bytes:,} bytes); oldest {_age(s.oldest_age)} old; {s.dropped:,} dropped, "
            f"{s.expired:,} expired")


def _rates(frame: Frame) -> str:
    digits = 0 if frame.span >= 10 else 1
    over = f"over the last {frame.span:,.{digits}f} s" if frame.span > 0 else "(after the next read)"
    net = " (net of each other)" if frame.rates_are_net else ""
    return f"rates: saved {_per_s(frame.saved)}, sent {_per_s(frame.sent)} {over}{net}"


def _subject_cells(row: SubjectRow) -> list[str]:
    st = row.stats
    return [row.subject, f"{st.pending:,}", f"{st.pending_bytes:,}", f"{st.dead:,}", f"{st.dropped:,}",
            f"{st.expired:,}", _per_s(row.saved), _per_s(row.sent)]


_HEADERS = ("subject", "pending", "bytes", "dead", "dropped", "expired", "saved", "sent")


def _shown(frame: Frame) -> list[SubjectRow]:
    """Subjects worth a row: something pending or dead, or a change in the window (drained ones stay in JSON)."""
    return [row for row in frame.subjects
            if row.stats.pending or row.stats.dead or row.saved or row.sent or len(set(row.pending_trend)) > 1]


def plain(frame: Frame) -> str:
    """The frame for a pipe or a file: lines made for grep, the subjects one tab-separated line each."""
    lines = [_summary(frame), _rates(frame), _claims_text(frame.claims), "\t".join(_HEADERS)]
    for row in _shown(frame):
        lines.append("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in _subject_cells(row)))
    return "".join(f"{line}\n" for line in lines)


def render(frame: Frame, *, max_rows: int = 20) -> RenderableType:
    """The frame for a terminal: the summary, sparklines of the last minute, and a table of subjects."""
    trend = 60
    s = frame.stats
    # Short lines: a terminal crops what does not fit, and the counts matter more than the URL.
    lines: list[RenderableType] = [
        Text(frame.url, style="bold"),
        Text(f"{s.pending:,} pending ({s.pending_bytes:,} bytes) · {s.dead:,} dead ({s.dead_bytes:,} bytes) · oldest "
             f"{_age(s.oldest_age)} · {s.dropped:,} dropped · {s.expired:,} expired"),
        Text(_claims_text(frame.claims))]
    top_pending = max(frame.pending_trend, default=0)
    for label, values, now in (("pending", frame.pending_trend, f"{frame.stats.pending:,}"),
                               ("saved", frame.saved_trend, _per_s(frame.saved)),
                               ("sent", frame.sent_trend, _per_s(frame.sent))):
        line = Text(f"{label:<8}")
        line.append(sparkline(values, trend), style="cyan")
        line.append(f" {now}")
        if label == "pending" and top_pending:
            line.append(f" (peak {top_pending:,})", style="dim")
        lines.append(line)
    if frame.rates_are_net:
        lines.append(Text("saved and sent are net of each other (see pbuffer watch --help)", style="dim"))
    shown = _shown(frame)
    table = Table(*_HEADERS, "pending, last minute", title=None, show_edge=False, pad_edge=False)
    for column in table.columns[1:8]:
        column.justify = "right"
    for row in shown[:max_rows]:
        table.add_row(*(Text(cell) for cell in _subject_cells(row)),
                      Text(sparkline(row.pending_trend, 20), style="cyan"))
    lines.append(table)
    if len(shown) > max_rows:
        lines.append(Text(f"... and {len(shown) - max_rows:,} more subject(s) (pbuffer watch --once | less)",
                          style="dim"))
    return Group(*lines)
