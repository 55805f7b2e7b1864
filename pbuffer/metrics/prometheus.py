"""Prometheus for a buffer and its relay: the numbers read at scrape time, the relay's observer, the health
check, and the collector :func:`instrument` registers (the package docstring, :mod:`pbuffer.metrics`, shows use)."""


from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..aio import AsyncBuffer
from ..buffer import Buffer
from ..errors import ConfigurationError
from ..limits import BufferStats, SubjectStats
from ..message import Message
from ..relay.drain import Relay, RelayObserver
from ..relay.jetstream import JetStreamTransport
from ..relay.transport import FAILURE_KINDS, Failure, Outcome, PublishResult

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry


__all__ = [
    "DURATION_BUCKETS",
    "OTHER",
    "RETRY_REASONS",
    "BufferReader",
    "Health",
    "Instrumentation",
    "RelayMetrics",
    "check_health",
    "instrument",
    "prometheus_module",
    "retry_reason",
]

_log = logging.getLogger("pbuffer.metrics")

#: The ``reason`` label of ``pbuffer_relay_retries_total``: a small fixed set, every one exported from the start.
RETRY_REASONS: tuple[str, ...] = FAILURE_KINDS
#: Upper bounds (seconds) of ``pbuffer_relay_publish_duration_seconds``: a window of 500 takes tens of ms on a
#: LAN; the top buckets catch the transport's timeout (5 s by default).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The ``subject`` label that sums the subjects beyond ``max_subjects`` (and a subject named ``other`` itself).
OTHER = "other"


def retry_reason(failure: Failure) -> str:
    """The ``reason`` label (one of :data:`RETRY_REASONS`) for a transient failure: its typed kind."""
    return failure.kind


# --------------------------------------------------------------------------------------------------- the relay


@dataclass(frozen=True, slots=True)
class RelaySnapshot:
    """:class:`RelayMetrics` at one moment (copied under its lock, so a scrape sees one consistent state)."""

    published: dict[str, int]
    duplicates: dict[str, int]
    retries: dict[str, int]
    dead_lettered: int
    buckets: tuple[int, ...]  # per DURATION_BUCKETS bound, not cumulative; then the count above the last one
    duration_sum: float
    duration_count: int
    last_ack_time: float | None  # time.time() of the last acknowledged window
    last_ack_monotonic: float | None
    started_monotonic: float
    windows_say_connected: bool


class RelayMetrics(RelayObserver):
    """Counts what a relay does, window by window (thread-safe: the relay's loop writes, a scrape thread reads).

    Totals since this object was made (per process, as Prometheus counters are). Published and duplicates are per
    stream, as the PubAck names it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._published: dict[str, int] = {}
        self._duplicates: dict[str, int] = {}
        self._retries = dict.fromkeys(RETRY_REASONS, 0)
        self._dead_lettered = 0
        self._buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self._duration_sum = 0.0
        self._duration_count = 0
        self._last_ack_time: float | None = None
        self._last_ack_monotonic: float | None = None
        self._started = time.monotonic()
        # For transports that cannot say whether they are connected: a window with an ack says yes, a window whose
        # every attempt failed as disconnected says no.
        self._connected = True

    def window_published(self, messages: Sequence[Message], results: Sequence[PublishResult],
                         seconds: float) -> None:
        self.record_window(results, seconds, *count_outcomes(results))

    def record_window(self, results: Sequence[PublishResult], seconds: float, published: Counter[str],
                      duplicates: Counter[str], failed: int) -> None:
        """:meth:`window_published` with the results already counted by :func:`count_outcomes`."""
        disconnected = attempted = 0
        if failed:
            for result in results:
                if result.failure is not None and result.failure.attempted:
                    attempted += 1
                    disconnected += retry_reason(result.failure) == "disconnected"
        bucket = next((i for i, bound in enumerate(DURATION_BUCKETS) if seconds <= bound), len(DURATION_BUCKETS))
        with self._lock:
            for stream, n in published.items():
                self._published[stream] = self._published.get(stream, 0) + n
            for stream, n in duplicates.items():
                self._duplicates[stream] = self._duplicates.get(stream, 0) + n
            self._buckets[bucket] += 1
            self._duration_sum += seconds
            self._duration_count += 1
            if published or duplicates:
                self._last_ack_time, self._last_ack_monotonic = time.time(), time.monotonic()
                self._connected = True
            elif attempted and disconnected == attempted:
                self._connected = False

    def retried(self, message: Message, failure: Failure) -> None:
        reason = retry_reason(failure)
        with self._lock:
            self._retries[reason] += 1

    def dead_lettered(self, message_id: str, reason: str) -> None:
        with self._lock:
            self._dead_lettered += 1

    def snapshot(self) -> RelaySnapshot:
        with self._lock:
            return RelaySnapshot(dict(self._published), dict(self._duplicates), dict(self._retries),
                                 self._dead_lettered, tuple(self._buckets), self._duration_sum, self._duration_count,
                                 self._last_ack_time, self._last_ack_monotonic, self._started, self._connected)


def count_outcomes(results: Sequence[PublishResult]) -> tuple[Counter[str], Counter[str], int]:
    """A window's results counted: stored per stream, duplicates per stream, and how many failed.

    The common window (every message stored) costs one comprehension and a Counter of str: an Enum member hashes
    in Python, so keying on the outcome would cost three times as much.
    """
    published = Counter([r.stream or "" for r in results if r.outcome is Outcome.STORED])
    rest = len(results) - published.total()
    if not rest:
        return published, Counter(), 0
    duplicates = Counter([r.stream or "" for r in results if r.outcome is Outcome.DUPLICATE])
    return published, duplicates, rest - duplicates.total()


def relay_connected(relay: Relay, snapshot: RelaySnapshot) -> bool:
    """Whether the relay's transport is connected: asked of a JetStream transport's connection now, else as its
    last windows showed."""
    transport = relay.transport
    if isinstance(transport, JetStreamTransport):
        return bool(transport.nc.is_connected)
    return snapshot.windows_say_connected


# -------------------------------------------------------------------------------------------------- the buffer


@dataclass(frozen=True, slots=True)
class BufferSnapshot:
    stats: BufferStats
    #: Per subject label: up to ``max_subjects`` subjects, then :data:`OTHER` summing the rest (always present).
    subjects: dict[str, SubjectStats]
    max_messages: int | None
    max_bytes: int | None


class BufferReader:
    """Reads a buffer's counters for an exporter, with the subject cap.

    The first ``max_subjects`` subjects met (sorted by name within one read) keep a label of their own for the
    life of this reader, so a counter never moves between series; later ones are summed under ``"other"``.
    """

    def __init__(self, buffer: Buffer | AsyncBuffer, *, max_subjects: int = 100) -> None:
        if isinstance(max_subjects, bool) or not isinstance(max_subjects, int) or max_subjects < 0:
            raise ConfigurationError(f"max_subjects must be an int of 0 or more, not {max_subjects!r}")
        self.buffer = buffer.buffer if isinstance(buffer, AsyncBuffer) else buffer
        self.max_subjects = max_subjects
        self._labelled: dict[str, None] = {}  # insertion-ordered set
        self._lock = threading.Lock()

    def read(self) -> BufferSnapshot:
        with self._lock:
            stats = self.buffer.stats()
            per_subject = self.buffer.subject_stats()
            for subject in per_subject:
                if len(self._labelled) >= self.max_subjects:
                    break
                if subject != OTHER:
                    self._labelled.setdefault(subject)
            zero = SubjectStats(0, 0, 0, 0, 0, 0, 0)
            # Labelled subjects stay exported at 0 even if a backend stops listing a drained subject.
            subjects = {subject: per_subject.get(subject, zero) for subject in self._labelled}
            other = [0] * 7
            for subject, counts in per_subject.items():
                if subject not in self._labelled:
                    for i, value in enumerate(subject_values(counts)):
                        other[i] += value
            subjects[OTHER] = SubjectStats(*other)
            limits = self.buffer.limits
            return BufferSnapshot(stats, subjects, limits.max_messages, limits.max_bytes)


def subject_values(s: SubjectStats) -> tuple[int, int, int, int, int, int, int]:
    """The counters of one subject, in the order of SubjectStats's fields."""
    return (s.pending, s.pending_bytes, s.dead, s.dead_bytes, s.dropped, s.expired, s.deleted)


# ---------------------------------------------------------------------------------------------------- health


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    reason: str


def check_health(reader: BufferReader, relay: Relay | None, metrics: RelayMetrics | None,
                 stall_after: float) -> Health:
    """Healthy: the buffer can be read and, with a relay, the relay is connected and not stalled.

    Stalled: messages are pending, the oldest of them was saved more than ``stall_after`` seconds ago, and no window
    was acknowledged within the last ``stall_after`` seconds (counted from when metrics started, for a relay that
    never published). A message saved after a quiet spell is therefore not a stall until it has waited
    ``stall_after`` seconds itself. A subject that alone keeps failing while others flow is not a stall: watch
    ``pbuffer_relay_lag_seconds`` and ``pbuffer_relay_retries_total`` for that.
    """
    try:
        stats = reader.buffer.stats()
    except Exception as exc:
        return Health(False, f"cannot read the buffer: {type(exc).__name__}: {exc}")
    if relay is None or metrics is None:
        return Health(True, f"ok: {stats.pending} message(s) pending")
    snapshot = metrics.snapshot()
    if not relay_connected(relay, snapshot):
        return Health(False, f"not connected to NATS; {stats.pending} message(s) pending")
    now = time.monotonic()
    since = now - (snapshot.last_ack_monotonic if snapshot.last_ack_monotonic is not None
                   else snapshot.started_monotonic)
    oldest = stats.oldest_age or 0.0
    if stats.pending and oldest > stall_after and since > stall_after:
        return Health(False, f"stalled: {stats.pending} message(s) pending, the oldest saved {oldest:.0f} s ago, "
                             f"and no publish acknowledged for {since:.0f} s (limit {stall_after:g} s)")
    last = "never" if snapshot.last_ack_monotonic is None else f"{now - snapshot.last_ack_monotonic:.1f} s ago"
    return Health(True, f"ok: connected, {stats.pending} message(s) pending, last publish acknowledged {last}")


# ------------------------------------------------------------------------------------------------ prometheus


class Instrumentation:
    """What :func:`instrument` set up: the collector in ``registry`` and the relay's observer. :meth:`close` undoes
    both."""

    def __init__(self, reader: BufferReader, relay: Relay | None, registry: CollectorRegistry) -> None:
        self.reader = reader
        self.relay = relay
        self.registry = registry
        self.relay_metrics = RelayMetrics() if relay is not None else None
        self._collector = _Collector(self)
        try:
            registry.register(self._collector)
        except ValueError as exc:  # the same names registered twice
            raise ConfigurationError(f"cannot register pbuffer metrics: {exc}") from exc
        if relay is not None and self.relay_metrics is not None:
            relay.add_observer(self.relay_metrics)

    def health(self, stall_after: float = 60.0) -> Health:
        return check_health(self.reader, self.relay, self.relay_metrics, stall_after)

    def close(self) -> None:
        self.registry.unregister(self._collector)
        if self.relay is not None and self.relay_metrics is not None:
            self.relay.remove_observer(self.relay_metrics)


def prometheus_module() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError("pbuffer metrics need prometheus-client: pip install 'pbuffer[metrics]'") from exc
    return prometheus_client


def instrument(buffer: Buffer | AsyncBuffer, relay: Relay | None = None, *,
               registry: CollectorRegistry | None = None, max_subjects: int = 100) -> Instrumentation:
    """Export ``buffer``'s (and ``relay``'s) metrics through a Prometheus collector in ``registry`` (default:
    ``prometheus_client.REGISTRY``).

    The buffer is read when the registry is collected, never on a save. ``max_subjects``: subjects with a label of
    their own; the rest are summed under ``subject="other"``. Raises :class:`~pbuffer.ConfigurationError` without
    prometheus-client, or when the registry already has pbuffer's metrics.
    """
    prometheus_client = prometheus_module()
    return Instrumentation(BufferReader(buffer, max_subjects=max_subjects), relay,
                           registry if registry is not None else prometheus_client.REGISTRY)


_HELP = {
    "pending_messages": "Messages saved and not yet acknowledged by JetStream (those a relay has claimed included).",
    "pending_bytes": "Payload bytes of the pending messages.",
    "dead_messages": "Dead letters: messages the server refused for good (or whose stored bytes were damaged).",
    "oldest_pending_age_seconds": "Seconds since the oldest pending message was saved; 0 when none is pending.",
    "dropped_messages": "Messages removed unsent by overflow=drop_oldest, since the buffer was created.",
    "expired_messages": "Messages removed unsent because they outlived ttl, since the buffer was created.",
    "limit_messages": "The buffer's max_messages.",
    "limit_bytes": "The buffer's max_bytes (payload bytes).",
    "relay_published_messages": "Messages JetStream acknowledged as stored, per stream, since metrics were "
                                "attached to the relay. A fast-ingest batch publish gets no per-message duplicate "
                                "flag: there, duplicates are counted here.",
    "relay_duplicate_messages": "Messages JetStream acknowledged as duplicates of a copy it already had (same "
                                "Nats-Msg-Id, e.g. a retry after a lost ack), per stream. Stays 0 with "
                                "fast-ingest batch publishing, which cannot see duplicates.",
    "relay_retries": "Transient publish failures that will be retried, by reason (timeout: outcome unknown).",
    "relay_dead_lettered_messages": "Messages the relay dead-lettered since metrics were attached to it.",
    "relay_publish_duration_seconds": "Seconds from a window's first publish to its last ack (or the timeout).",
    "relay_lag_seconds": "Seconds since the oldest pending message was saved (0 when none is pending).",
    "relay_connected": "1 while the relay's NATS connection is up, else 0.",
    "relay_last_publish_timestamp_seconds": "Unix time of the last window JetStream acknowledged (0: none yet).",
}


class _Collector:
    """Builds every family at collect time from the buffer's counters and the relay's observer."""

    def __init__(self, owner: Instrumentation) -> None:
        self.owner = owner

    def describe(self) -> Iterator[Any]:
        # Names only, so registering does not read the buffer.
        return self._families(None, None)

    def collect(self) -> Iterator[Any]:
        owner = self.owner
        snapshot = owner.reader.read()
        relay = owner.relay_metrics.snapshot() if owner.relay_metrics is not None else None
        return self._families(snapshot, relay)

    def _families(self, buf: BufferSnapshot | None, rel: RelaySnapshot | None) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        def family(kind: Any, name: str, labels: Sequence[str] = ()) -> Any:
            return kind(f"pbuffer_{name}", _HELP[name], labels=labels)

        subjects = buf.subjects.items() if buf is not None else ()
        for name, index, kind in (("pending_messages", 0, GaugeMetricFamily), ("pending_bytes", 1, GaugeMetricFamily),
                                  ("dead_messages", 2, GaugeMetricFamily),
                                  ("dropped_messages", 4, CounterMetricFamily),
                                  ("expired_messages", 5, CounterMetricFamily)):
            metric = family(kind, name, ["subject"])
            for subject, counts in subjects:
                metric.add_metric([subject], subject_values(counts)[index])
            yield metric
        oldest = family(GaugeMetricFamily, "oldest_pending_age_seconds")
        age = (buf.stats.oldest_age or 0.0) if buf is not None else 0.0
        if buf is not None:
            oldest.add_metric([], age)
        yield oldest
        if buf is None or buf.max_messages is not None:
            metric = family(GaugeMetricFamily, "limit_messages")
            if buf is not None and buf.max_messages is not None:
                metric.add_metric([], buf.max_messages)
            yield metric
        if buf is None or buf.max_bytes is not None:
            metric = family(GaugeMetricFamily, "limit_bytes")
            if buf is not None and buf.max_bytes is not None:
                metric.add_metric([], buf.max_bytes)
            yield metric
        if self.owner.relay is None:
            return
        published = family(CounterMetricFamily, "relay_published_messages", ["stream"])
        duplicates = family(CounterMetricFamily, "relay_duplicate_messages", ["stream"])
        retries = family(CounterMetricFamily, "relay_retries", ["reason"])
        dead = family(CounterMetricFamily, "relay_dead_lettered_messages")
        duration = family(HistogramMetricFamily, "relay_publish_duration_seconds")
        lag = family(GaugeMetricFamily, "relay_lag_seconds")
        connected = family(GaugeMetricFamily, "relay_connected")
        last = family(GaugeMetricFamily, "relay_last_publish_timestamp_seconds")
        if rel is not None:
            # Every stream either counter has seen appears in both, so a rate() of either never lacks a series.
            for stream in sorted(rel.published.keys() | rel.duplicates.keys()):
                published.add_metric([stream], rel.published.get(stream, 0))
                duplicates.add_metric([stream], rel.duplicates.get(stream, 0))
            for reason in RETRY_REASONS:
                retries.add_metric([reason], rel.retries[reason])
            dead.add_metric([], rel.dead_lettered)
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), rel.buckets, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            duration.add_metric([], buckets, rel.duration_sum)
            lag.add_metric([], age)
            assert self.owner.relay is not None
            connected.add_metric([], 1.0 if relay_connected(self.owner.relay, rel) else 0.0)
            last.add_metric([], rel.last_ack_time or 0.0)
        yield from (published, duplicates, retries, dead, duration, lag, connected, last)
