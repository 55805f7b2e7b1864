"""Metrics for a buffer and its relay: Prometheus (``pip install 'pbuffer[metrics]'``), a ``/metrics`` and
``/healthz`` HTTP endpoint, and OpenTelemetry (``pip install 'pbuffer[otel]'``, see :mod:`pbuffer.metrics.otel`).

The buffer's numbers are read at scrape time from its counters (:meth:`Buffer.stats`, :meth:`Buffer.subject_stats`):
a save costs nothing more. The relay's come from a :class:`RelayMetrics` observer that counts per window.
Every series a dashboard needs exists from the first scrape: each retry reason at 0, every subject the buffer ever
held (kept at 0 once drained), the oldest age at 0 when the buffer is empty.

::

    registry = prometheus_client.CollectorRegistry()
    pbuffer.metrics.instrument(buffer, relay, registry=registry)   # or serve(buffer, relay, port=9464)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..aio import AsyncBuffer
from ..buffer import Buffer
from ..relay.drain import Relay
from .http import MetricsServer, serve
from .prometheus import (
    DURATION_BUCKETS,
    OTHER,
    RETRY_REASONS,
    BufferReader,
    Health,
    Instrumentation,
    RelayMetrics,
    check_health,
    instrument,
    retry_reason,
)

if TYPE_CHECKING:
    from .otel import OTelInstrumentation

__all__ = [
    "DURATION_BUCKETS",
    "OTHER",
    "RETRY_REASONS",
    "BufferReader",
    "Health",
    "Instrumentation",
    "MetricsServer",
    "RelayMetrics",
    "check_health",
    "instrument",
    "instrument_otel",
    "retry_reason",
    "serve",
]


def instrument_otel(buffer: Buffer | AsyncBuffer, relay: Relay | None = None, *, meter_provider: Any = None,
                    max_subjects: int = 100) -> OTelInstrumentation | None:
    """The same numbers through the OpenTelemetry metrics API (see :func:`pbuffer.metrics.otel.instrument_otel`);
    ``None``, doing nothing, when opentelemetry-api is not installed."""
    from .otel import instrument_otel as instrument_with_otel
    return instrument_with_otel(buffer, relay, meter_provider=meter_provider, max_subjects=max_subjects)
