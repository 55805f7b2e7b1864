"""propagate_trace: a saved message carries its producer's W3C trace context, and the relay publishes it in a span
linked to the producer's, read back with the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pbuffer
from pbuffer import ConfigurationError, Message, Relay
from pbuffer.relay.transport import MockTransport, PublishResult

OTHER_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def accept(message: Message) -> PublishResult:
    return PublishResult.stored("S", 1)


@pytest.fixture
def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


@pytest.mark.parametrize("url", ["memory://tracing", "sqlite"])
def test_a_saved_message_carries_its_producers_trace_and_the_publish_span_links_to_it(
        provider: tuple[TracerProvider, InMemorySpanExporter], url: str, tmp_path: object) -> None:
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("test")
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db" if url == "sqlite" else url, propagate_trace=True) as buf:
        with tracer.start_as_current_span("place order") as producer:
            one = buf.save(b"one", subject="orders.created")
            (two,) = buf.save_many([b"two"], subject="orders.created", headers={"K": "v"})
            own = buf.save(b"own", subject="orders.created", headers={"traceparent": OTHER_PARENT})
        outside = buf.save(b"outside", subject="orders.created")
        trace_id = f"{producer.get_span_context().trace_id:032x}"
        span_id = f"{producer.get_span_context().span_id:016x}"
        for message in (one, two):
            assert re.fullmatch(f"00-{trace_id}-{span_id}-[0-9a-f]{{2}}", message.headers["traceparent"])
        assert two.headers["K"] == "v"
        assert own.headers["traceparent"] == OTHER_PARENT  # the caller's own header wins
        assert "traceparent" not in outside.headers  # no span, nothing to carry
        # Stored with the message: read back, it still carries the context.
        assert [m.headers.get("traceparent") for m in buf.get_all()] == [
            one.headers["traceparent"], two.headers["traceparent"], OTHER_PARENT, None]
        asyncio.run(Relay(buf, MockTransport(accept), tracer_provider=tracer_provider).drain())
    publish = [span for span in exporter.get_finished_spans() if span.name == "pbuffer publish"]
    assert len(publish) == 1 and publish[0].kind is trace.SpanKind.PRODUCER
    linked = {(link.context.trace_id, link.context.span_id) for link in publish[0].links}
    assert (producer.get_span_context().trace_id, producer.get_span_context().span_id) in linked
    assert (int(OTHER_PARENT.split("-")[1], 16), int(OTHER_PARENT.split("-")[2], 16)) in linked
    assert publish[0].attributes is not None and publish[0].attributes["messaging.batch.message_count"] == 4


def test_the_callers_traceparent_wins_in_any_letter_case(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    """NATS header names keep their case, W3C's traceparent has none (a consumer may look up either): a caller's
    ``Traceparent`` must not get a second, different ``traceparent`` beside it."""
    with (pbuffer.open("memory://cased", propagate_trace=True) as buf,
          provider[0].get_tracer("test").start_as_current_span("place order")):
        message = buf.save(b"x", subject="a", headers={"Traceparent": OTHER_PARENT, "K": "v"})
    assert dict(message.headers) == {"Traceparent": OTHER_PARENT, "K": "v"}


def test_without_the_option_nothing_is_added_and_no_span_is_made(
        provider: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    tracer_provider, exporter = provider
    with pbuffer.open("memory://untraced") as buf:
        with tracer_provider.get_tracer("test").start_as_current_span("place order"):
            message = buf.save(b"x", subject="a")
        assert "traceparent" not in message.headers
        asyncio.run(Relay(buf, MockTransport(accept), tracer_provider=tracer_provider).drain())
    assert not [span for span in exporter.get_finished_spans() if span.name == "pbuffer publish"]


def test_the_async_facade_keeps_the_callers_context(provider: tuple[TracerProvider, InMemorySpanExporter],
                                                    tmp_path: object) -> None:
    tracer = provider[0].get_tracer("test")

    async def scenario() -> None:
        for group_commit in (True, False):
            buf = pbuffer.open(f"sqlite:///{tmp_path}/b{group_commit}.db", propagate_trace=True,
                               group_commit=group_commit)
            async with pbuffer.AsyncBuffer(buf) as aio:
                with tracer.start_as_current_span("async producer") as span:
                    saved = await aio.save(b"x", subject="a")
                assert saved.headers["traceparent"].split("-")[1] == f"{span.get_span_context().trace_id:032x}"

    asyncio.run(scenario())


def test_the_option_in_a_url(tmp_path: object) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db?propagate_trace=true") as buf:
        assert buf.propagate_trace


def test_without_opentelemetry_the_option_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "opentelemetry" or n.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ConfigurationError, match=r"pbuffer\[otel\]"):
        pbuffer.open("memory://no-otel", propagate_trace=True)
