"""Metrics: a relay draining into a real nats-server while /metrics and /healthz are fetched over HTTP, the subject
cap, the limits gauges, retry reasons, the relay's observer hook, and the OpenTelemetry path."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats_support import add_stream, connect

import pbuffer
from pbuffer import Message
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay, RelayObserver
from pbuffer.relay.jetstream import classify, parse_reply
from pbuffer.relay.transport import MockTransport, PublishResult

try:
    import prometheus_client
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # installed by the dev extra; a missing one must not turn a CI run green
    if os.environ.get("CI"):
        raise
    pytest.skip("prometheus-client is not installed: pip install -e '.[dev]'", allow_module_level=True)

from pbuffer import metrics
from pbuffer.metrics import RETRY_REASONS, retry_reason

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

EVERY_SERIES = [
    ("pbuffer_pending_messages", {"subject": "other"}),
    ("pbuffer_pending_bytes", {"subject": "other"}),
    ("pbuffer_dead_messages", {"subject": "other"}),
    ("pbuffer_dropped_messages_total", {"subject": "other"}),
    ("pbuffer_expired_messages_total", {"subject": "other"}),
    ("pbuffer_oldest_pending_age_seconds", {}),
    *[("pbuffer_relay_retries_total", {"reason": reason}) for reason in RETRY_REASONS],
    ("pbuffer_relay_dead_lettered_messages_total", {}),
    ("pbuffer_relay_publish_duration_seconds_count", {}),
    ("pbuffer_relay_publish_duration_seconds_sum", {}),
    ("pbuffer_relay_publish_duration_seconds_bucket", {"le": "+Inf"}),
    ("pbuffer_relay_lag_seconds", {}),
    ("pbuffer_relay_connected", {}),
    ("pbuffer_relay_last_publish_timestamp_seconds", {}),
]


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(server: metrics.MetricsServer) -> Samples:
    status, text = fetch(f"{server.url}/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def accept_all(message: Message) -> PublishResult:
    return PublishResult.stored("S", 1)


# ------------------------------------------------------------------------------------------- against nats-server


def test_scraped_counts_match_the_stream_while_a_relay_drains_into_nats(server: NatsServer, tmp_path: Path) -> None:
    add_stream(server, "ORDERS", ["orders.>"])

    async def scenario() -> None:
        transport = await connect(server)
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            early = buf.save_many([b"x"] * 7, subject="orders.early")
            # Acknowledged by the server, then the process "died" before deleting them: the relay meets duplicates.
            assert all(r.acknowledged for r in await transport.publish(early))
            relay = Relay(buf, transport, batch_size=50)
            with metrics.serve(buf, relay, port=0) as http:
                first = await asyncio.to_thread(scrape, http)
                assert value(first, "pbuffer_pending_messages", subject="orders.early") == 7
                # A stream is known from its first PubAck on; until then its counters have no series.
                assert not any(name == "pbuffer_relay_published_messages_total" for name, _ in first)
                running = asyncio.ensure_future(relay.run())
                for i in range(20):  # saved while the relay runs, each batch scraped meanwhile
                    buf.save_many([f"{i}.{j}".encode() for j in range(25)],
                                  subject="orders.created" if i % 2 else "orders.paid")
                    await asyncio.to_thread(scrape, http)
                while len(buf):
                    await asyncio.sleep(0.02)
                relay.stop()
                await running
                info = await transport.js.stream_info("ORDERS")
                samples = await asyncio.to_thread(scrape, http)
                health = await asyncio.to_thread(fetch, f"{http.url}/healthz")
            await relay.close()

        stored = info.state.messages
        assert stored == 7 + 500
        assert value(samples, "pbuffer_relay_published_messages_total", stream="ORDERS") == stored - 7
        assert value(samples, "pbuffer_relay_duplicate_messages_total", stream="ORDERS") == 7
        assert relay.stats.published == stored - 7 and relay.stats.duplicates == 7
        for subject in ("orders.early", "orders.created", "orders.paid"):  # drained subjects stay, at 0
            assert value(samples, "pbuffer_pending_messages", subject=subject) == 0
            assert value(samples, "pbuffer_pending_bytes", subject=subject) == 0
        assert value(samples, "pbuffer_oldest_pending_age_seconds") == 0
        assert value(samples, "pbuffer_relay_lag_seconds") == 0
        assert value(samples, "pbuffer_relay_connected") == 1
        assert value(samples, "pbuffer_relay_last_publish_timestamp_seconds") > 1.7e9
        windows = value(samples, "pbuffer_relay_publish_duration_seconds_count")
        assert windows >= (stored + 49) // 50
        assert value(samples, "pbuffer_relay_publish_duration_seconds_bucket", le="+Inf") == windows
        assert all(value(samples, "pbuffer_relay_retries_total", reason=r) == 0 for r in RETRY_REASONS)
        assert health[0] == 200 and health[1].startswith("ok: connected, 0 message(s) pending")

    asyncio.run(scenario())


def test_healthz_is_503_while_nats_is_down_and_retries_are_counted_as_disconnected(
        server: NatsServer) -> None:
    add_stream(server, "ORDERS", ["orders.>"])

    async def scenario() -> None:
        transport = await connect(server)
        buf = pbuffer.open("memory://")
        relay = Relay(buf, transport, backoff_initial=0.01, backoff_max=0.05)
        with metrics.serve(buf, relay, port=0) as http:
            assert (await asyncio.to_thread(fetch, f"{http.url}/healthz"))[0] == 200
            await asyncio.to_thread(server.stop)
            while transport.nc.is_connected:
                await asyncio.sleep(0.01)
            buf.save(b"a", subject="orders.created")
            status, reason = await asyncio.to_thread(fetch, f"{http.url}/healthz")
            assert status == 503 and reason.startswith("not connected to NATS; 1 message(s) pending")
            running = asyncio.ensure_future(relay.run())
            while relay.stats.retried < 2:
                await asyncio.sleep(0.01)
            samples = await asyncio.to_thread(scrape, http)
            assert value(samples, "pbuffer_relay_connected") == 0
            assert value(samples, "pbuffer_relay_retries_total", reason="disconnected") >= 2
            await asyncio.to_thread(server.start)
            while len(buf):
                await asyncio.sleep(0.02)
            relay.stop()
            await running
            assert (await asyncio.to_thread(fetch, f"{http.url}/healthz"))[0] == 200
            samples = await asyncio.to_thread(scrape, http)
            assert value(samples, "pbuffer_relay_connected") == 1
            assert value(samples, "pbuffer_relay_published_messages_total", stream="ORDERS") == 1
            # Every retry is counted under one reason (a stream still recovering may add a no_stream one).
            assert sum(value(samples, "pbuffer_relay_retries_total", reason=r) for r in RETRY_REASONS) == (
                relay.stats.retried)
        await relay.close()

    asyncio.run(scenario())


def test_no_stream_retries_are_labelled_no_stream(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        buf = pbuffer.open("memory://")
        buf.save(b"a", subject="nobody.listens")
        relay = Relay(buf, transport, backoff_initial=0.01, backoff_max=0.05)
        instrumentation = metrics.instrument(buf, relay, registry=prometheus_client.CollectorRegistry())
        running = asyncio.ensure_future(relay.run())
        while relay.stats.retried < 2:
            await asyncio.sleep(0.01)
        relay.stop()
        await running
        await relay.close()
        retries = instrumentation.relay_metrics.snapshot().retries  # type: ignore[union-attr]
        assert retries["no_stream"] == relay.stats.retried and sum(retries.values()) == relay.stats.retried

    asyncio.run(scenario())


# ----------------------------------------------------------------------------------------------- with a mock


def test_every_series_exists_at_the_first_scrape() -> None:
    buf = pbuffer.open("memory://")
    relay = Relay(buf, MockTransport(accept_all))
    with metrics.serve(buf, relay, port=0) as http:
        samples = scrape(http)
        status, reason = fetch(f"{http.url}/healthz")
        assert fetch(f"{http.url}/nothing")[0] == 404
    for name, labels in EVERY_SERIES:
        assert value(samples, name, **labels) == (1 if name == "pbuffer_relay_connected" else 0), name
    assert not any(name.startswith("pbuffer_limit_") for name, _ in samples)  # no limits set
    assert (status, reason) == (200, "ok: connected, 0 message(s) pending, last publish acknowledged never\n")


def test_help_texts_say_what_fast_ingest_counts() -> None:
    """A fast-ingest batch cannot see duplicates: the help of both relay counters says where they go."""
    buf = pbuffer.open("memory://")
    registry = prometheus_client.CollectorRegistry()
    metrics.instrument(buf, Relay(buf, MockTransport(accept_all)), registry=registry)
    helps = {family.name: family.documentation
             for family in text_string_to_metric_families(prometheus_client.generate_latest(registry).decode())}
    assert "fast-ingest" in helps["pbuffer_relay_published_messages"]
    assert "duplicates" in helps["pbuffer_relay_published_messages"]
    assert "fast-ingest" in helps["pbuffer_relay_duplicate_messages"]
    assert "cannot see duplicates" in helps["pbuffer_relay_duplicate_messages"]


def test_buffer_only_metrics_and_limits_gauges() -> None:
    buf = pbuffer.open("memory://", max_messages=1000, max_bytes=65536)
    buf.save_many([b"abc"] * 4, subject="a.b")
    with metrics.serve(buf, None, port=0) as http:
        samples = scrape(http)
        assert fetch(f"{http.url}/healthz") == (200, "ok: 4 message(s) pending\n")
    assert value(samples, "pbuffer_limit_messages") == 1000
    assert value(samples, "pbuffer_limit_bytes") == 65536
    assert value(samples, "pbuffer_pending_messages", subject="a.b") == 4
    assert value(samples, "pbuffer_pending_bytes", subject="a.b") == 12
    assert value(samples, "pbuffer_oldest_pending_age_seconds") > 0
    assert not any(name.startswith("pbuffer_relay_") for name, _ in samples)


def test_dropped_and_expired_totals_per_subject() -> None:
    buf = pbuffer.open("memory://", max_messages=3, overflow="drop_oldest")
    buf.save_many([b"1", b"2", b"3"], subject="a")
    buf.save_many([b"4", b"5"], subject="b")  # drops two of a's
    with metrics.serve(buf, None, port=0) as http:
        samples = scrape(http)
    assert value(samples, "pbuffer_dropped_messages_total", subject="a") == 2
    assert value(samples, "pbuffer_dropped_messages_total", subject="b") == 0
    assert value(samples, "pbuffer_limit_messages") == 3
    assert ("pbuffer_limit_bytes", ()) not in samples


def test_subjects_beyond_the_cap_are_summed_under_other_and_keep_their_places() -> None:
    buf = pbuffer.open("memory://")
    for subject, n in (("a", 1), ("b", 2), ("c", 3), ("d", 4), ("other", 5)):
        buf.save_many([b"xy"] * n, subject=subject)
    with metrics.serve(buf, Relay(buf, MockTransport(accept_all)), port=0, max_subjects=2) as http:
        samples = scrape(http)
        assert {dict(labels).get("subject") for name, labels in samples if name == "pbuffer_pending_messages"} == {
            "a", "b", "other"}
        assert value(samples, "pbuffer_pending_messages", subject="a") == 1
        assert value(samples, "pbuffer_pending_messages", subject="b") == 2
        assert value(samples, "pbuffer_pending_messages", subject="other") == 3 + 4 + 5  # a subject "other" too
        assert value(samples, "pbuffer_pending_bytes", subject="other") == 24
        buf.save(b"z", subject="0-first-by-name")  # sorts before "a", but the labelled subjects stay as they were
        samples = scrape(http)
        assert value(samples, "pbuffer_pending_messages", subject="other") == 13
        assert ("pbuffer_pending_messages", (("subject", "0-first-by-name"),)) not in samples


def test_retry_reasons_and_dead_letters_are_counted_by_the_observer() -> None:
    buf = pbuffer.open("memory://")
    causes = {"t": asyncio.TimeoutError(), "u": nats.js.errors.ServiceUnavailableError(),
              "d": nats.errors.ConnectionClosedError(), "n": nats.errors.NoRespondersError(),
              "o": ValueError("who knows"), "p": nats.errors.MaxPayloadError()}
    failed: set[str] = set()

    def handler(message: Message) -> PublishResult:
        if message.subject not in failed:
            failed.add(message.subject)
            return classify(causes[message.subject], message)
        return PublishResult.stored("S", 1)

    for subject in causes:
        buf.save(b"m", subject=subject)
    relay = Relay(buf, MockTransport(handler), backoff_initial=0.001, backoff_max=0.002)
    with metrics.serve(buf, relay, port=0) as http:
        asyncio.run(relay.drain())
        samples = scrape(http)
    reasons = {"timeout": 1, "unavailable": 1, "disconnected": 1, "no_stream": 1, "other": 1}
    for reason, count in reasons.items():
        assert value(samples, "pbuffer_relay_retries_total", reason=reason) == count, reason
    assert value(samples, "pbuffer_relay_dead_lettered_messages_total") == 1 == relay.stats.dead_lettered
    assert value(samples, "pbuffer_dead_messages", subject="p") == 1
    assert value(samples, "pbuffer_relay_published_messages_total", stream="S") == 5


def test_every_transient_failure_jetstream_reports_has_its_reason_label() -> None:
    """Every transient failure pbuffer.relay.jetstream reports carries the typed kind its label needs."""
    message = Message("0" * 8 + "-0000-7000-8000-" + "0" * 12, "s", b"", {}, 0)
    cases: list[tuple[PublishResult, str]] = [
        (classify(asyncio.TimeoutError(), message), "timeout"),
        (classify(nats.errors.TimeoutError(), message), "timeout"),
        (classify(nats.errors.FlushTimeoutError(), message), "timeout"),  # (an asyncio.TimeoutError)
        (classify(nats.errors.NoRespondersError(), message), "no_stream"),
        (classify(nats.js.errors.NoStreamResponseError(), message), "no_stream"),
        (classify(nats.js.errors.ServiceUnavailableError(), message), "unavailable"),
        (classify(nats.js.errors.ServerError(), message), "unavailable"),
        (classify(nats.js.errors.APIError(code=503, description="down"), message), "unavailable"),
        (classify(nats.errors.ConnectionClosedError(), message), "disconnected"),
        (classify(nats.errors.ConnectionReconnectingError(), message), "disconnected"),
        (classify(nats.errors.ConnectionDrainingError(), message), "disconnected"),
        (classify(nats.errors.OutboundBufferLimitError(), message), "disconnected"),
        (classify(nats.errors.StaleConnectionError(), message), "disconnected"),
        (classify(nats.js.errors.TooManyStalledMsgsError(), message), "other"),
        (classify(RuntimeError("surprise"), message), "other"),
        (parse_reply(b"", {"Status": "503"}), "no_stream"),
        (parse_reply(b'{"error":{"code":503,"err_code":10077,"description":"x"}}', None), "unavailable"),
        (parse_reply(b"", {"Status": "408"}), "other"),
    ]
    # JetStreamTransport.publish on a client that is not connected.
    from nats.aio.client import Client

    from pbuffer.relay.jetstream import JetStreamTransport

    cases += [(result, "disconnected")
              for result in asyncio.run(JetStreamTransport(Client()).publish([message]))]
    for result, label in cases:
        assert result.failure is not None and result.failure.transient, result
        assert retry_reason(result.failure) == label, result.failure.reason


def test_healthz_reports_a_stall_when_pending_messages_get_no_ack() -> None:
    buf = pbuffer.open("memory://")
    relay = Relay(buf, MockTransport(lambda m: PublishResult.failed("503 for a while", transient=True)),
                  backoff_initial=0.001, backoff_max=0.002)

    async def scenario() -> None:
        with metrics.serve(buf, relay, port=0, stall_after=0.05) as http:
            buf.save(b"a", subject="a.b")
            running = asyncio.ensure_future(relay.drain())  # fails every try: retries until stopped
            while relay.stats.retried == 0 or (buf.stats().oldest_age or 0.0) < 0.1:
                await asyncio.sleep(0.01)
            status, reason = await asyncio.to_thread(fetch, f"{http.url}/healthz")
            assert status == 503 and reason.startswith("stalled: 1 message(s) pending"), reason
            relay.stop()
            await running
            samples = await asyncio.to_thread(scrape, http)
            assert value(samples, "pbuffer_relay_retries_total", reason="other") == relay.stats.retried
            assert value(samples, "pbuffer_relay_lag_seconds") >= 0.1
            buf.delete(buf.get().id)  # type: ignore[union-attr]
            # Nothing pending: nothing can be stalled.
            assert await asyncio.to_thread(fetch, f"{http.url}/healthz") == (
                200, "ok: connected, 0 message(s) pending, last publish acknowledged never\n")

    asyncio.run(scenario())


def test_a_failing_observer_never_stops_delivery(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(RelayObserver):
        def window_published(self, *args: object) -> None:
            raise RuntimeError("observer bug")

    buf = pbuffer.open("memory://")
    buf.save_many([b"a", b"b"], subject="a.b")
    relay = Relay(buf, MockTransport(accept_all), observer=Broken())
    stats = asyncio.run(relay.drain())
    assert stats.published == 2 and len(buf) == 0
    assert "relay observer" in caplog.text and "observer bug" in caplog.text


def test_instrument_registers_once_and_close_detaches() -> None:
    buf = pbuffer.open("memory://")
    relay = Relay(buf, MockTransport(accept_all))
    registry = prometheus_client.CollectorRegistry()
    instrumentation = metrics.instrument(buf, relay, registry=registry)
    with pytest.raises(pbuffer.ConfigurationError, match="cannot register pbuffer metrics"):
        metrics.instrument(buf, relay, registry=registry)
    assert registry.get_sample_value("pbuffer_relay_retries_total", {"reason": "timeout"}) == 0
    instrumentation.close()
    assert registry.get_sample_value("pbuffer_relay_retries_total", {"reason": "timeout"}) is None
    assert relay._observers == ()


def test_without_prometheus_client_instrument_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(pbuffer.ConfigurationError, match=r"pip install 'pbuffer\[metrics\]'"):
        metrics.instrument(pbuffer.open("memory://"))


def test_serve_refuses_a_busy_port() -> None:
    buf = pbuffer.open("memory://")
    with metrics.serve(buf, None, port=0) as http, pytest.raises(pbuffer.ConfigurationError, match="cannot serve"):
        metrics.serve(buf, None, port=http.port)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
@pytest.mark.parametrize("addr", ["::1", "[::1]"])
def test_serve_listens_on_an_ipv6_address(addr: str) -> None:
    """``--metrics-addr ::1`` (or ``[::1]``, as written in a URL) binds an IPv6 socket."""
    with metrics.serve(pbuffer.open("memory://"), None, port=0, addr=addr) as http:
        assert http.url == f"http://[::1]:{http.port}"
        assert fetch(f"{http.url}/healthz") == (200, "ok: 0 message(s) pending\n")


def test_drain_on_a_busy_metrics_port_says_so_and_drains_nothing(server: NatsServer, tmp_path: Path) -> None:
    """`pbuffer drain --metrics-addr ADDR --metrics-port PORT` listens on ADDR: a port taken there is an error
    (exit status 1, one line, no traceback) before anything is published."""
    from click.testing import CliRunner

    from pbuffer.cli import main

    add_stream(server, "ORDERS", ["orders.>"])
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save_many([b"m"] * 3, subject="orders.created")
    with socket.socket() as taken:
        taken.bind(("127.0.0.2", 0))  # not the default 127.0.0.1: the address must reach the server
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["drain", "--url", url, "-s", server.url, "--metrics-port", str(port),
                                           "--metrics-addr", "127.0.0.2"])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot serve metrics on 127.0.0.2:{port}: ") and "already in use" in line, line
    with pbuffer.open(url) as buf:
        assert len(buf) == 3


# ------------------------------------------------------------------------------------------------ OpenTelemetry


def otel_points(reader: object) -> dict[str, list[object]]:
    data = reader.get_metrics_data()  # type: ignore[attr-defined]
    found: dict[str, list[object]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def test_opentelemetry_reports_the_same_numbers(server: NatsServer) -> None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("opentelemetry-sdk is not installed: pip install -e '.[dev]'")

    add_stream(server, "ORDERS", ["orders.>"])
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    async def scenario() -> Relay:
        transport = await connect(server)
        buf = pbuffer.open("memory://", max_messages=10_000)
        relay = Relay(buf, transport, batch_size=40)
        handle = metrics.instrument_otel(buf, relay, meter_provider=provider)
        assert handle is not None
        before = otel_points(reader)
        buf.save_many([b"p"] * 100, subject="orders.created")
        early = buf.save_many([b"q"] * 3, subject="orders.paid")
        await transport.publish(early)  # duplicates for the relay
        await relay.drain()
        after = otel_points(reader)
        await relay.close()
        assert [p.value for p in otel_points(reader)["pbuffer.relay.connected"]] == [0]  # type: ignore[attr-defined]
        handle.close()
        # Every retry reason exists from the first collection, at 0.
        assert sorted(p.attributes["error.type"] for p in before["pbuffer.relay.retries"]) == sorted(  # type: ignore[attr-defined]
            RETRY_REASONS)
        sent = after["messaging.client.sent.messages"]
        assert [(p.attributes["messaging.system"], p.attributes["messaging.destination.name"], p.value)  # type: ignore[attr-defined]
                for p in sent] == [("nats", "ORDERS", 103)]
        (duplicates,) = after["pbuffer.relay.duplicate.messages"]
        assert duplicates.value == 3  # type: ignore[attr-defined]
        (duration,) = after["messaging.client.operation.duration"]
        assert duration.count >= 3 and duration.attributes["messaging.operation.type"] == "send"  # type: ignore[attr-defined]
        pending = {p.attributes["pbuffer.subject"]: p.value for p in after["pbuffer.pending.messages"]}  # type: ignore[attr-defined]
        assert pending == {"orders.created": 0, "orders.paid": 0, "other": 0}
        assert [p.value for p in after["pbuffer.limit.messages"]] == [10_000]  # type: ignore[attr-defined]
        assert [p.value for p in after["pbuffer.relay.connected"]] == [1]  # type: ignore[attr-defined]
        return relay

    relay = asyncio.run(scenario())
    assert relay.stats.published == 100 and relay.stats.duplicates == 3


def test_opentelemetry_on_one_relay_and_meter_twice_is_refused() -> None:
    """The API hands back the same instruments for the same names, so a second observer would count every message
    twice; Prometheus refuses the second registration, and so does this."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("opentelemetry-sdk is not installed: pip install -e '.[dev]'")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    buf = pbuffer.open("memory://")
    relay = Relay(buf, MockTransport(accept_all))
    first = metrics.instrument_otel(buf, relay, meter_provider=provider)
    assert first is not None
    with pytest.raises(pbuffer.ConfigurationError, match="already"):
        metrics.instrument_otel(buf, relay, meter_provider=provider)
    buf.save_many([b"m"] * 3, subject="a")
    asyncio.run(relay.drain())
    (sent,) = otel_points(reader)["messaging.client.sent.messages"]
    assert sent.value == 3  # type: ignore[attr-defined]
    first.close()
    assert metrics.instrument_otel(buf, relay, meter_provider=provider) is not None  # once closed, again
    other = MeterProvider(metric_readers=[InMemoryMetricReader()])
    assert metrics.instrument_otel(buf, relay, meter_provider=other) is not None  # another provider: its own


def test_without_opentelemetry_instrument_otel_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    buf = pbuffer.open("memory://")
    relay = Relay(buf, MockTransport(accept_all))
    assert metrics.instrument_otel(buf, relay) is None
    assert relay._observers == ()



def test_drain_serves_metrics_and_health_while_it_follows(server: NatsServer, tmp_path: Path) -> None:
    """`pbuffer drain --follow --metrics-port`: /metrics counts what the stream holds, /healthz says 200, and
    SIGTERM ends it (exit 0) with the port closed."""
    add_stream(server, "ORDERS", ["orders.>"])
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save_many([b"m"] * 300, subject="orders.created")
    with socket.socket() as probe:  # a free port for the command to take
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    drain = subprocess.Popen([sys.executable, "-m", "pbuffer.cli", "drain", "--url", url, "-s", server.url,
                              "--follow", "--metrics-port", str(port)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        published = -1.0
        while time.monotonic() < deadline:
            try:
                status, text = fetch(f"{base}/metrics")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)  # not listening yet
                continue
            samples: Samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in text_string_to_metric_families(text) for sample in family.samples}
            published = samples.get(("pbuffer_relay_published_messages_total", (("stream", "ORDERS"),)), -1.0)
            pending = samples.get(("pbuffer_pending_messages", (("subject", "orders.created"),)), -1.0)
            # Counted when the acks came in; pending drops once the relay's delete after them committed.
            if status == 200 and published == 300 and pending == 0:
                break
            time.sleep(0.1)
        assert (published, pending) == (300, 0), "the relay's count reached what the stream holds, and drained"
        health = fetch(f"{base}/healthz")
        assert health[0] == 200, health
    finally:
        drain.send_signal(signal.SIGTERM)
        _out, err = drain.communicate(timeout=30)
    assert drain.returncode == 0, err
    assert f"metrics on {base}/metrics" in err
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        fetch(f"{base}/metrics")

    async def stored() -> int:
        transport = await connect(server)
        info = await transport.js.stream_info("ORDERS")
        await transport.close()
        return int(info.state.messages)

    assert asyncio.run(stored()) == 300
