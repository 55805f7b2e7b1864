"""Fast-ingest batch publishing (ADR-50) against a real nats-server: what the protocol promises (checked here, since
the transport's delete-safety rests on it), and the relay draining into streams with and without ``allow_batched``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats_support import connect

import pbuffer
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.fast_ingest import FastBatch, StreamModes
from pbuffer.relay.jetstream import JetStreamTransport


async def create_stream(nc: Client, name: str, subjects: list[str], **config: Any) -> dict[str, Any]:
    """Create a stream through the raw API: nats-py 2.16's StreamConfig has no ``allow_batched``."""
    body = {"name": name, "subjects": subjects, **config}
    reply = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.{name}", json.dumps(body).encode())).data)
    assert "error" not in reply, reply
    return reply  # type: ignore[no-any-return]


async def update_stream(nc: Client, name: str, subjects: list[str], **config: Any) -> None:
    body = {"name": name, "subjects": subjects, **config}
    reply = json.loads((await nc.request(f"$JS.API.STREAM.UPDATE.{name}", json.dumps(body).encode())).data)
    assert "error" not in reply, reply


async def stream_ids(transport: JetStreamTransport, stream: str) -> list[str]:
    """Every ``Nats-Msg-Id`` in ``stream``, in stream order (an ephemeral pull consumer; the count from stream info)."""
    info = await transport.js.stream_info(stream)
    subscription = await transport.js.pull_subscribe(info.config.subjects[0], stream=stream)  # type: ignore[index]
    found: list[str] = []
    while len(found) < info.state.messages:
        for msg in await subscription.fetch(min(1000, info.state.messages - len(found)), timeout=10):
            found.append(msg.headers["Nats-Msg-Id"] if msg.headers else "")
            await msg.ack()
    await subscription.unsubscribe()
    return found


# ------------------------------------------------------------------------------------- the protocol itself


async def raw_batch(nc: Client, batch_id: str, payloads: list[bytes], *, flow: int) -> list[tuple[int, dict[str, Any]]]:
    """Publish one gap-fail fast batch by hand; every reply as (batch seq it answered, parsed JSON), in order."""
    inbox = nc.new_inbox()
    replies: list[tuple[int, dict[str, Any]]] = []
    final = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        body = json.loads(msg.data)
        replies.append((int(msg.subject.split(".")[-3]), body))
        if "count" in body or "error" in body:
            final.set()

    subscription = await nc.subscribe(f"{inbox}.>", cb=on_reply)
    for seq, payload in enumerate(payloads, start=1):
        op = 0 if seq == 1 else 2 if seq == len(payloads) else 1
        await nc.publish("fi.raw", payload, reply=f"{inbox}.{batch_id}.{flow}.fail.{seq}.{op}.$FI",
                         headers={"Nats-Msg-Id": f"{batch_id}-{seq}"})
    await asyncio.wait_for(final.wait(), 10)
    await nc.flush()
    await asyncio.sleep(0.2)  # replies after the first error or the PubAck, if any, are part of what is checked
    await subscription.unsubscribe()
    return replies


def test_a_rejected_message_ends_the_batch_and_no_ack_covers_it(server: NatsServer) -> None:
    """The delete-safety of the transport: with gap mode fail, the first message the stream rejects ends the
    batch; no flow ack and no PubAck count reaches it, and exactly the messages before it are stored."""

    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "RAW", ["fi.>"], allow_batched=True, max_msg_size=64)
        # A flow ack after every message (flow 1), so an ack covering the rejected one would show.
        payloads = [b"ok"] * 6 + [b"x" * 100] + [b"ok"] * 5
        replies = await raw_batch(transport.nc, "REJECT", payloads, flow=1)
        acks = [body["seq"] for _, body in replies if body.get("type") == "ack"]
        counts = [body["count"] for _, body in replies if "count" in body]
        assert acks and max(acks) <= 6, replies
        assert counts == [6], replies
        assert await stream_ids(transport, "RAW") == [f"REJECT-{seq}" for seq in range(1, 7)]
        await transport.close()

    asyncio.run(scenario())


def test_every_flow_ack_and_the_pubacks_count_are_already_in_the_stream(server: NatsServer) -> None:
    """What the server's flow ack says (messages up to its seq are persisted), checked: after each one, stream info
    shows at least that many messages. The transport does not rely on it (only on the final PubAck's count)."""

    async def scenario() -> None:
        transport = await connect(server)
        nc = transport.nc
        await create_stream(nc, "RAW", ["fi.>"], allow_batched=True)
        inbox = nc.new_inbox()
        acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_reply(msg: Msg) -> None:
            await acks.put(json.loads(msg.data))

        await nc.subscribe(f"{inbox}.>", cb=on_reply)
        checked = 0
        for seq in range(1, 41):
            op = 0 if seq == 1 else 2 if seq == 40 else 1
            await nc.publish("fi.raw", b"m", reply=f"{inbox}.ACKS.4.fail.{seq}.{op}.$FI",
                             headers={"Nats-Msg-Id": f"a{seq}"})
            if seq % 4 == 0:  # stop sending until the flow ack for this stretch came
                while True:
                    reply = await asyncio.wait_for(acks.get(), 10)
                    stored = (await transport.js.stream_info("RAW")).state.messages
                    covered = reply.get("count", reply.get("seq", 0))
                    assert stored >= covered, (reply, stored)
                    checked += 1
                    if covered >= seq:
                        break
        assert checked >= 10
        await transport.close()

    asyncio.run(scenario())


def test_duplicates_are_dropped_silently_and_counted_in_the_batch(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "RAW", ["fi.>"], allow_batched=True)
        await raw_batch(transport.nc, "DUP", [b"a", b"b", b"c"], flow=500)
        # The same ids again, in a new batch: nothing stored, the PubAck still counts them all.
        replies = await raw_batch(transport.nc, "DUP", [b"a", b"b", b"c"], flow=500)
        final = [body for _, body in replies if "count" in body]
        assert final == [{"stream": "RAW", "seq": 0, "batch": "DUP", "count": 3}]
        assert await stream_ids(transport, "RAW") == ["DUP-1", "DUP-2", "DUP-3"]
        await transport.close()

    asyncio.run(scenario())


def test_replies_are_read_into_a_batch() -> None:
    batch = FastBatch("B", 10)
    batch.on_reply(b'{"type":"ack","seq":0,"msgs":500}', None)
    assert (batch.acked, batch.msgs, batch.done) == (0, 500, False)
    assert batch.allows(1000) and not batch.allows(1001)
    batch.on_reply(b'{"stream":"S","seq":42,"batch":"B","count":10}', None)
    assert batch.outcome().confirmed == 10 and batch.outcome().failure is None

    failed = FastBatch("B", 10)
    failed.on_reply(b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},'
                    b'"stream":"S","seq":0}', None)
    failed.on_reply(b'{"type":"gap","last_seq":5,"seq":6}', None)
    failed.on_reply(b'{"stream":"S","seq":4,"batch":"B","count":4}', None)
    outcome = failed.outcome()
    assert outcome.confirmed == 4 and outcome.failure is not None and "10054" in outcome.failure

    disabled = FastBatch("B", 3)
    disabled.on_reply(b'{"error":{"code":400,"err_code":10205,"description":"batch publish is disabled"}}', None)
    assert disabled.outcome().stale_mode and disabled.outcome().confirmed == 0

    nobody = FastBatch("B", 3)
    nobody.on_reply(b"", {"Status": "503"})
    assert nobody.outcome().stale_mode and nobody.outcome().failure is not None

    garbage = FastBatch("B", 3)
    garbage.on_reply(b"not json", None)
    assert garbage.outcome().failure is not None and garbage.outcome().confirmed == 0


def test_stream_modes_are_read_from_stream_info(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        nc = transport.nc
        await create_stream(nc, "FAST", ["fast.>"], allow_batched=True)
        await create_stream(nc, "PLAIN", ["plain.>"])
        modes = StreamModes()
        assert await modes.batched_stream(nc, "fast.a") == "FAST"
        assert await modes.batched_stream(nc, "plain.a") is None
        assert await modes.batched_stream(nc, "nowhere.a") is None
        # Cached: a stream created for the subject is seen only once the subject is forgotten (or the ttl ends),
        # and then read in the background while the known mode stays in use.
        await create_stream(nc, "LATER", ["nowhere.>"], allow_batched=True)
        assert await modes.batched_stream(nc, "nowhere.a") is None
        modes.forget(["nowhere.a"])
        assert await modes.batched_stream(nc, "nowhere.a") is None
        await modes.wait_reads()
        assert await modes.batched_stream(nc, "nowhere.a") == "LATER"
        expired = StreamModes(ttl=0.01)
        assert await expired.batched_stream(nc, "plain.a") is None
        await update_stream(nc, "PLAIN", ["plain.>"], allow_batched=True)
        await asyncio.sleep(0.02)
        assert await expired.batched_stream(nc, "plain.a") is None
        await expired.wait_reads()
        assert await expired.batched_stream(nc, "plain.a") == "PLAIN"
        await transport.close()

    asyncio.run(scenario())


def test_an_unanswered_read_keeps_what_was_known_and_is_tried_again_soon(server: NatsServer) -> None:
    """A stream read during an election or an outage must not turn batches off (or on) for a minute."""

    async def scenario() -> None:
        transport = await connect(server)
        nc = transport.nc
        await create_stream(nc, "FAST", ["fast.>"], allow_batched=True)
        modes = StreamModes(ttl=60)
        assert await modes.batched_stream(nc, "fast.a") == "FAST"
        assert await modes.batched_stream(nc, "plain.a") is None
        modes.forget(["fast.a", "plain.a"])
        server.kill()
        for subject, known in (("fast.a", "FAST"), ("plain.a", None)):
            assert await modes.batched_stream(nc, subject) == known
            await modes.wait_reads()  # no answer: what was known stays
            assert await modes.batched_stream(nc, subject) == known
        assert await modes.batched_stream(nc, "never.seen") is None
        await asyncio.to_thread(server.start)
        await create_stream_when_back(nc, "NEVER", ["never.>"])
        await asyncio.sleep(1.1)  # the first retry after an unanswered read comes after 1 s, not after the ttl
        assert await modes.batched_stream(nc, "never.seen") is None
        await modes.wait_reads()
        assert await modes.batched_stream(nc, "never.seen") == "NEVER"
        await transport.close()

    asyncio.run(scenario())


async def create_stream_when_back(nc: Client, name: str, subjects: list[str]) -> None:
    for _ in range(100):
        try:
            await create_stream(nc, name, subjects, allow_batched=True)
            return
        except Exception:  # still reconnecting
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not come back")


# ---------------------------------------------------------------------------------------------- the relay


def test_relay_drains_20000_messages_as_fast_batches_each_once_in_order(server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "FAST", ["fast.>"], allow_batched=True)
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            saved = [m.id for m in buf.save_many([f"m{i}".encode() for i in range(20_000)], subject="fast.orders")]
            async with Relay(buf, transport, close_transport=False) as relay:
                stats = await relay.drain()
            assert (stats.published, stats.duplicates, stats.dead_lettered, stats.retried) == (20_000, 0, 0, 0)
            assert len(buf) == 0
        assert transport.fast_ingested == 20_000  # every message went in a batch, none one by one
        assert await stream_ids(transport, "FAST") == saved
        await transport.close()

    asyncio.run(scenario())


def test_a_stream_without_allow_batched_gets_one_publish_per_message(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "PLAIN", ["plain.>"])
        buf = pbuffer.open("memory://")
        saved = [m.id for m in buf.save_many([b"x"] * 2_000, subject="plain.orders")]
        async with Relay(buf, transport, close_transport=False) as relay:
            stats = await relay.drain()
        assert stats.published == 2_000 and len(buf) == 0
        assert transport.fast_ingested == 0
        assert await stream_ids(transport, "PLAIN") == saved
        await transport.close()

    asyncio.run(scenario())


def test_fast_ingest_can_be_turned_off(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server, fast_ingest=False)
        await create_stream(transport.nc, "FAST", ["fast.>"], allow_batched=True)
        buf = pbuffer.open("memory://")
        saved = [m.id for m in buf.save_many([b"x"] * 600, subject="fast.orders")]
        async with Relay(buf, transport, close_transport=False) as relay:
            await relay.drain()
        assert transport.fast_ingested == 0
        assert await stream_ids(transport, "FAST") == saved
        await transport.close()

    asyncio.run(scenario())


def test_subjects_of_both_kinds_in_one_window_each_keep_their_order(server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "FAST", ["fast.>"], allow_batched=True)
        await create_stream(transport.nc, "PLAIN", ["plain.>"])
        buf = pbuffer.open(f"sqlite:///{tmp_path}/b.db")
        fast: list[str] = []
        plain: list[str] = []
        for i in range(3_000):
            subject = "fast.a" if i % 2 else "plain.a"
            message = buf.save(f"m{i}".encode(), subject=subject)
            (fast if i % 2 else plain).append(message.id)
        async with Relay(buf, transport, close_transport=False) as relay:
            stats = await relay.drain()
        assert stats.published == 3_000 and len(buf) == 0
        assert transport.fast_ingested == 1_500
        assert await stream_ids(transport, "FAST") == fast
        assert await stream_ids(transport, "PLAIN") == plain
        await transport.close()
        buf.close()

    asyncio.run(scenario())


def test_a_message_the_stream_rejects_mid_batch_is_dead_lettered_and_the_rest_stored_once(
        server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "FAST", ["fast.>"], allow_batched=True, max_msg_size=200)
        buf = pbuffer.open("memory://")
        messages = buf.save_many([b"x" * (500 if i == 250 else 10) for i in range(500)], subject="fast.a")
        async with Relay(buf, transport, close_transport=False) as relay:
            stats = await relay.drain()
        assert (stats.published, stats.dead_lettered) == (499, 1)
        assert [d.message.id for d in buf.dead_letters()] == [messages[250].id]
        assert "10054" in buf.dead_letters()[0].reason  # the stream's own words, from the per-message path
        # The batch ended at the rejected message: its PubAck confirmed the 250 before it, unless the relay read the
        # error first and went one by one from the start (safe too: the server drops what it has by id).
        assert transport.fast_ingested in (0, 250)
        assert await stream_ids(transport, "FAST") == [m.id for i, m in enumerate(messages) if i != 250]
        await transport.close()

    asyncio.run(scenario())


def test_a_replay_of_what_the_server_already_has_is_acknowledged_not_stored_again(
        server: NatsServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "FAST", ["fast.>"], allow_batched=True)
        with pbuffer.open(f"sqlite:///{tmp_path}/b.db") as buf:
            saved = buf.save_many([f"m{i}".encode() for i in range(800)], subject="fast.a")
            # Acknowledged, then the process "died" before deleting: every message is published again.
            assert all(r.acknowledged for r in await transport.publish(saved[:500]))
            async with Relay(buf, transport, close_transport=False) as relay:
                stats = await relay.drain()
            # Fast-ingest sees no duplicates: replayed messages count as published.
            assert (stats.published, stats.duplicates) == (800, 0)
            assert len(buf) == 0
        assert await stream_ids(transport, "FAST") == [m.id for m in saved]
        await transport.close()

    asyncio.run(scenario())


def test_a_stream_created_after_a_no_stream_failure_is_used_with_batches(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        buf = pbuffer.open("memory://")
        saved = buf.save_many([b"x"] * 100, subject="later.a")
        results = await transport.publish(saved)
        assert all(r.failure is not None and r.failure.no_stream for r in results)
        await create_stream(transport.nc, "LATER", ["later.>"], allow_batched=True)
        # The stream is read again in the background; windows go one by one until it is known.
        for _ in range(50):
            assert all(r.acknowledged for r in await transport.publish(saved))
            if transport.fast_ingested:
                break
            await asyncio.sleep(0.01)
        assert transport.fast_ingested == 100
        await transport.close()

    asyncio.run(scenario())


def test_a_stream_that_stops_allowing_batches_falls_back_in_the_same_call(server: NatsServer) -> None:
    async def scenario() -> None:
        transport = await connect(server)
        await create_stream(transport.nc, "FAST", ["fast.>"], allow_batched=True)
        buf = pbuffer.open("memory://")
        first, second, third = (buf.save_many([b"x"] * 50, subject="fast.a") for _ in range(3))
        assert all(r.acknowledged for r in await transport.publish(first))
        assert transport.fast_ingested == 50
        await update_stream(transport.nc, "FAST", ["fast.>"], allow_batched=False)
        # The cached mode is stale: the batch is refused (10205) and the window goes one by one.
        assert all(r.acknowledged for r in await transport.publish(second))
        assert all(r.acknowledged for r in await transport.publish(third))
        assert transport.fast_ingested == 50
        assert await stream_ids(transport, "FAST") == [m.id for m in first + second + third]
        await transport.close()

    asyncio.run(scenario())
