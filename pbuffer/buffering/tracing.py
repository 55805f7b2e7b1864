"""Opt-in W3C trace propagation through the buffer (OpenTelemetry, ``pip install 'pbuffer[otel]'``).

A buffer opened with ``propagate_trace=True`` writes the current trace context (``traceparent``, and
``tracestate`` when there is one) into each saved message's headers, so a consumer continues the producer's trace
across the buffer and any outage. The relay publishes a window in a ``pbuffer publish`` span (kind PRODUCER)
linked to the span of every producer whose message is in it: a window mixes many traces, so links, not a parent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigurationError
from ..message import Message

__all__ = ["PublishSpans", "trace_injector"]

#: The W3C header a producer's context travels in; a window without it makes no span.
TRACEPARENT = "traceparent"


def trace_injector() -> Callable[[Mapping[str, str] | None], Mapping[str, str] | None]:
    """A function that adds the current trace context to a message's headers (the caller's own headers win; a
    ``traceparent`` of theirs in any letter case means nothing is added)."""
    try:
        from opentelemetry import propagate
    except ImportError as exc:
        raise ConfigurationError("propagate_trace=True needs opentelemetry-api: pip install 'pbuffer[otel]'") from exc

    def with_trace(headers: Mapping[str, str] | None) -> Mapping[str, str] | None:
        if headers and any(name.lower() == TRACEPARENT for name in headers):
            return headers  # the caller's own context, in whatever letter case: never a second one beside it
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        if not carrier:  # no span is active: nothing to carry
            return headers
        if headers:
            carrier.update(headers)
        return carrier

    return with_trace


class PublishSpans:
    """The relay's side: a span around the publish of each window that carries trace contexts."""

    def __init__(self, tracer_provider: Any = None) -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._extract = propagate.extract
        self._tracer = trace.get_tracer("pbuffer", tracer_provider=tracer_provider)

    @staticmethod
    def wanted(messages: Sequence[Message]) -> bool:
        return any(TRACEPARENT in message.headers for message in messages)

    @contextmanager
    def window(self, messages: Sequence[Message]) -> Iterator[None]:
        links = []
        for message in messages:
            if TRACEPARENT in message.headers:
                context = self._trace.get_current_span(self._extract(message.headers)).get_span_context()
                if context.is_valid:
                    links.append(self._trace.Link(context))
        attributes: dict[str, str | int] = {"messaging.system": "nats", "messaging.operation.name": "publish",
                                            "messaging.batch.message_count": len(messages)}
        with self._tracer.start_as_current_span("pbuffer publish", kind=self._trace.SpanKind.PRODUCER, links=links,
                                                attributes=attributes):
            yield


def publish_spans(tracer_provider: Any = None) -> PublishSpans | None:
    """:class:`PublishSpans`, or ``None`` when opentelemetry-api is not installed (then nothing is traced)."""
    try:
        return PublishSpans(tracer_provider)
    except ImportError:
        return None
