"""The buffer's and relay's metrics through the OpenTelemetry metrics API (``pip install 'pbuffer[otel]'``).

Named after OpenTelemetry's messaging semantic conventions where one fits: ``messaging.client.sent.messages`` (every
message the relay handed to the server: acknowledged ones with ``messaging.destination.name`` = the stream, failed
ones with ``error.type`` = the retry reason or ``dead_lettered``) and ``messaging.client.operation.duration`` (one
window: its first publish to its last ack), both with ``messaging.system="nats"``,
``messaging.operation.name="publish"`` and ``messaging.operation.type="send"``. What the conventions do not cover is
named ``pbuffer.*``, the same numbers as the Prometheus series of :mod:`pbuffer.metrics`.

Without opentelemetry-api installed, :func:`instrument_otel` does nothing and returns ``None``. Without an SDK (a
meter provider) configured, the API's own no-op meter makes every call free.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .. import _version
from ..aio import AsyncBuffer
from ..buffer import Buffer
from ..errors import ConfigurationError
from ..message import Message
from ..relay.drain import Relay
from ..relay.transport import Failure, PublishResult
from .prometheus import (
    DURATION_BUCKETS,
    RETRY_REASONS,
    BufferReader,
    BufferSnapshot,
    RelayMetrics,
    count_outcomes,
    relay_connected,
    retry_reason,
    subject_values,
)

__all__ = ["OTelInstrumentation", "instrument_otel"]

_log = logging.getLogger("pbuffer.otel")

_SEND = {"messaging.system": "nats", "messaging.operation.name": "publish", "messaging.operation.type": "send"}


def instrument_otel(buffer: Buffer | AsyncBuffer, relay: Relay | None = None, *, meter_provider: Any = None,
                    max_subjects: int = 100) -> OTelInstrumentation | None:
    """Report ``buffer``'s (and ``relay``'s) metrics through OpenTelemetry; ``meter_provider`` defaults to the
    global one. ``max_subjects`` as in :func:`pbuffer.metrics.instrument`. ``None`` without opentelemetry-api.
    Raises :class:`~pbuffer.ConfigurationError` when ``relay`` already reports to that meter provider."""
    try:
        from opentelemetry import metrics
    except ImportError:
        return None
    meter = metrics.get_meter("pbuffer", _version.__version__, meter_provider=meter_provider)
    if relay is not None and any(isinstance(o, _Observer) and o.meter is meter for o in relay._observers):
        # The meter hands back the same instruments: a second observer would count every message twice.
        raise ConfigurationError("this relay already reports to this meter provider (instrument_otel() called "
                                 "twice); close() the first one to start again")
    return OTelInstrumentation(meter, BufferReader(buffer, max_subjects=max_subjects), relay)


class _Observer(RelayMetrics):
    """Records the synchronous instruments per window, and keeps :class:`RelayMetrics`'s state for the
    asynchronous ones (connected, last publish)."""

    def __init__(self, meter: Any) -> None:
        super().__init__()
        self.meter = meter
        self.sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}",
            description="Messages the relay handed to the NATS server (acknowledged: messaging.destination.name is "
                        "the stream; failed: error.type says why). Duplicates included.")
        try:
            self.duration = meter.create_histogram(
                "messaging.client.operation.duration", unit="s",
                description="Seconds from a window's first publish to its last ack (or the timeout).",
                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        except TypeError:  # opentelemetry-api before 1.23 has no bucket advice
            self.duration = meter.create_histogram("messaging.client.operation.duration", unit="s",
                                                   description="Seconds from a window's first publish to its last "
                                                               "ack (or the timeout).")
        self.duplicates = meter.create_counter(
            "pbuffer.relay.duplicate.messages", unit="{message}",
            description="Messages JetStream acknowledged as duplicates of a copy it already had (same Nats-Msg-Id). "
                        "Stays 0 with fast-ingest batch publishing, which cannot see duplicates.")
        self.retries = meter.create_counter(
            "pbuffer.relay.retries", unit="{message}",
            description="Transient publish failures that will be retried; error.type: timeout, no_stream, "
                        "unavailable, disconnected, other.")
        self.dead = meter.create_counter("pbuffer.relay.dead_lettered.messages", unit="{message}",
                                         description="Messages the relay dead-lettered.")

    def window_published(self, messages: Sequence[Message], results: Sequence[PublishResult],
                         seconds: float) -> None:
        published, duplicates, failed = count_outcomes(results)
        self.record_window(results, seconds, published, duplicates, failed)
        sent: dict[tuple[str, str], int] = {}  # (attribute, value) -> messages
        streams = published.keys() | duplicates.keys()
        for stream in streams:
            sent["messaging.destination.name", stream] = published[stream] + duplicates[stream]
        attempted_failures = 0
        if failed:
            for result in results:
                failure = result.failure
                if failure is not None and failure.attempted:
                    attempted_failures += 1
                    key = ("error.type", retry_reason(failure) if failure.transient else "dead_lettered")
                    sent[key] = sent.get(key, 0) + 1
        for (name, value), count in sent.items():
            self.sent.add(count, {**_SEND, name: value})
        for stream, count in duplicates.items():
            self.duplicates.add(count, {**_SEND, "messaging.destination.name": stream})
        attributes = dict(_SEND)
        if len(streams) == 1:  # a window that went to one stream names it; a mixed one does not
            attributes["messaging.destination.name"] = next(iter(streams))
        if not streams and attempted_failures:
            attributes["error.type"] = "failed"
        self.duration.record(seconds, attributes)

    def retried(self, message: Message, failure: Failure) -> None:
        super().retried(message, failure)
        self.retries.add(1, {**_SEND, "error.type": retry_reason(failure)})

    def dead_lettered(self, message_id: str, reason: str) -> None:
        super().dead_lettered(message_id, reason)
        self.dead.add(1, dict(_SEND))


class OTelInstrumentation:
    """What :func:`instrument_otel` set up; :meth:`close` detaches it from the relay and silences its callbacks
    (the OpenTelemetry API cannot remove an instrument)."""

    def __init__(self, meter: Any, reader: BufferReader, relay: Relay | None) -> None:
        from opentelemetry.metrics import Observation

        self.reader = reader
        self.relay = relay
        self._closed = False
        self._last: tuple[float, BufferSnapshot] | None = None
        self.observer = _Observer(meter) if relay is not None else None

        def per_subject(index: int) -> Callable[[Any], Iterable[Any]]:
            def callback(_options: Any) -> Iterable[Any]:
                snapshot = self._read(fresh=index == 0)
                if snapshot is None:
                    return []
                return [Observation(subject_values(counts)[index], {"pbuffer.subject": subject})
                        for subject, counts in snapshot.subjects.items()]
            return callback

        def whole(read: Callable[[BufferSnapshot], float | None]) -> Callable[[Any], Iterable[Any]]:
            def callback(_options: Any) -> Iterable[Any]:
                snapshot = self._read()
                value = None if snapshot is None else read(snapshot)
                return [] if value is None else [Observation(value)]
            return callback

        for name, index, unit, description in (
                ("pbuffer.pending.messages", 0, "{message}", "Messages saved and not yet acknowledged by JetStream."),
                ("pbuffer.pending.bytes", 1, "By", "Payload bytes of the pending messages."),
                ("pbuffer.dead.messages", 2, "{message}", "Dead letters.")):
            meter.create_observable_up_down_counter(name, [per_subject(index)], unit=unit, description=description)
        for name, index, description in (
                ("pbuffer.dropped.messages", 4, "Messages removed unsent by overflow=drop_oldest."),
                ("pbuffer.expired.messages", 5, "Messages removed unsent because they outlived ttl.")):
            meter.create_observable_counter(name, [per_subject(index)], unit="{message}", description=description)
        meter.create_observable_gauge(
            "pbuffer.oldest_pending.age", [whole(lambda s: s.stats.oldest_age or 0.0)], unit="s",
            description="Seconds since the oldest pending message was saved; 0 when none is pending.")
        meter.create_observable_gauge("pbuffer.limit.messages", [whole(lambda s: s.max_messages)],
                                      unit="{message}", description="The buffer's max_messages.")
        meter.create_observable_gauge("pbuffer.limit.bytes", [whole(lambda s: s.max_bytes)], unit="By",
                                      description="The buffer's max_bytes.")
        if relay is not None:
            assert self.observer is not None
            relay.add_observer(self.observer)
            meter.create_observable_gauge(
                "pbuffer.relay.lag", [whole(lambda s: s.stats.oldest_age or 0.0)], unit="s",
                description="Seconds since the oldest pending message was saved (0 when none is pending).")
            meter.create_observable_gauge("pbuffer.relay.connected", [self._connected], unit="1",
                                          description="1 while the relay's NATS connection is up, else 0.")
            meter.create_observable_gauge("pbuffer.relay.last_publish.timestamp", [self._last_publish], unit="s",
                                          description="Unix time of the last window JetStream acknowledged.")
            # The first publish creates the per-reason series; these make every reason exist from the start.
            for reason in RETRY_REASONS:
                self.observer.retries.add(0, {**_SEND, "error.type": reason})
            self.observer.dead.add(0, dict(_SEND))

    def _read(self, *, fresh: bool = False) -> BufferSnapshot | None:
        """The buffer's numbers. A collection calls the callbacks in the order the instruments were made: the first
        one (pending messages) reads the buffer, the others reuse that read (up to a second old), so one collection
        costs one read and shows one consistent state."""
        if self._closed:
            return None
        last = self._last
        if not fresh and last is not None and time.monotonic() - last[0] < 1.0:
            return last[1]
        try:
            snapshot = self.reader.read()
        except Exception:  # an unreadable buffer must not break the application's other metrics
            _log.exception("reading the buffer for OpenTelemetry failed")
            return None
        self._last = (time.monotonic(), snapshot)
        return snapshot

    def _connected(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        if self._closed or self.relay is None or self.observer is None:
            return []
        return [Observation(1 if relay_connected(self.relay, self.observer.snapshot()) else 0)]

    def _last_publish(self, _options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        if self._closed or self.observer is None:
            return []
        return [Observation(self.observer.snapshot().last_ack_time or 0.0)]

    def close(self) -> None:
        self._closed = True
        if self.relay is not None and self.observer is not None:
            self.relay.remove_observer(self.observer)

