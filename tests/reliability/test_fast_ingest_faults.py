"""Issue 15: the relay publishing fast-ingest batches (a stream with ``allow_batched``) through faults in the middle of
a batch: nats-server killed -9 and restarted on the same store, and an R3 stream losing its leader. Counted the
Jepsen way: every saved id exactly once in the stream, the buffer empty, nothing dead-lettered.

As in the other fault tests, each fault waits for progress (so many more messages acknowledged), and then for a
batch to be in flight, so it lands in the middle of one; the only deadlines are hang guards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from pathlib import Path

import pytest

import pbuffer
from pbuffer.examples.natsserver import NatsCluster, NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport

from .faults_support import (
    HANG_GUARD,
    RecordingTransport,
    check_drained,
    connect_recording,
    require_nats_server,
    stream_ids,
)
from .test_cluster import stream_leader

KILLS = 6
TOTAL = 60_000  # each kill costs a few windows of 2,000: every kill must land during the drain
#: Windows of 2,000: a batch sends 1,000 messages (two flow acks' worth), then paces itself by the server's flow
#: acks; so a kill lands, in turn, while it waits for a flow ack (1,000 in flight) or once everything is sent and
#: the commit's PubAck is awaited (2,000 in flight).
WINDOW = 2_000
MOMENTS = (1, WINDOW)


async def create_batched_stream(transport: JetStreamTransport, name: str, subjects: list[str],
                                replicas: int = 1) -> None:
    """A stream that allows fast-ingest batches, through the raw API (nats-py 2.16 has no ``allow_batched``)."""
    body = {"name": name, "subjects": subjects, "allow_batched": True, "num_replicas": replicas}
    deadline = time.monotonic() + HANG_GUARD
    while True:  # a cluster's meta leader may still be settling
        try:
            reply = json.loads((await transport.nc.request(f"$JS.API.STREAM.CREATE.{name}",
                                                           json.dumps(body).encode(), timeout=5)).data)
        except Exception as exc:
            reply = {"error": str(exc)}
        if "error" not in reply:
            assert reply["config"].get("allow_batched") is True
            return
        assert time.monotonic() < deadline, f"cannot create stream {name}: {reply}"
        await asyncio.sleep(0.2)


async def mid_batch(transport: RecordingTransport, drain: asyncio.Future[object], at_least: int = 1) -> int:
    """Wait until at least ``at_least`` publishes are in flight; how many."""
    deadline = time.monotonic() + HANG_GUARD
    while transport.in_flight < at_least:
        assert not drain.done(), "the drain finished before the fault: make the backlog bigger"
        assert time.monotonic() < deadline, "no publish in flight"
        await asyncio.sleep(0.0005)
    return transport.in_flight


async def batches_again(transport: RecordingTransport, before: int, drain: asyncio.Future[object]) -> None:
    """Wait until a fast-ingest batch confirmed messages again (not only the per-message fallback)."""
    deadline = time.monotonic() + HANG_GUARD
    while transport.fast_ingested <= before:
        if drain.done():
            drain.result()
            raise AssertionError("the drain finished before a batch was confirmed after the fault")
        assert time.monotonic() < deadline, f"no batch confirmed for {HANG_GUARD} s: {dict(transport.failures)}"
        await asyncio.sleep(0.01)


@pytest.mark.slow
def test_server_killed_in_the_middle_of_fast_batches_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    require_nats_server()
    rng = random.Random(int(os.environ.get("PBUFFER_CRASH_SEED", "20261201")))
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        saved = [m.id for m in buf.save_many([f"m{i}".encode() for i in range(TOTAL)], subject="fastfaults.a")]

    with NatsServer(store_dir=tmp_path / "nats") as server:
        async def scenario() -> None:
            transport = await connect_recording(server.url, reconnect_time_wait=0.1, timeout=1.0)
            await create_batched_stream(transport, "FASTFAULTS", ["fastfaults.>"])
            kills: list[str] = []
            with pbuffer.open(url) as buf:
                relay = Relay(buf, transport, batch_size=WINDOW, backoff_max=0.5, close_transport=False)
                drain: asyncio.Future[object] = asyncio.ensure_future(relay.drain())
                for kill in range(KILLS):
                    await transport.wait_acknowledged(transport.acknowledged + rng.randint(500, 2000), drain)
                    in_flight = await mid_batch(transport, drain, MOMENTS[kill % len(MOMENTS)])
                    batched_before = transport.fast_ingested
                    server.kill()
                    down = rng.uniform(0.0, 1.0)
                    await asyncio.sleep(down)
                    await asyncio.to_thread(server.start)
                    kills.append(f"{in_flight} in flight, {len(buf)} pending, down {down:.2f} s")
                    # Batches again after the restart (not only the per-message fallback).
                    await batches_again(transport, batched_before, drain)
                stats = await asyncio.wait_for(drain, HANG_GUARD)
                pending, dead = len(buf), buf.dead_letters()
                await relay.close()
            await transport.close()

            check = await JetStreamTransport.connect(server.url)
            ids = await stream_ids(check, "FASTFAULTS", "fastfaults.a")
            await check.close()

            counted = check_drained(pending, dead, saved, ids)
            print(f"\n{TOTAL} messages in fast-ingest batches, {len(kills)} kills -9 of nats-server mid-batch:")
            for line in kills:
                print(f"  kill: {line}")
            print(f"  relay: {stats}; {transport.fast_ingested} confirmed by batch PubAcks, the rest one by one; "
                  f"failures: {dict(transport.failures)}")
            print(f"  stream: {counted.in_stream} messages, every id once; in buffer order: {counted.in_order}")

        asyncio.run(scenario())


@pytest.mark.slow
def test_r3_stream_losing_its_leader_in_the_middle_of_a_fast_batch(tmp_path: Path) -> None:
    require_nats_server()
    url = f"sqlite:///{tmp_path}/b.db"
    total = 8_000
    with pbuffer.open(url) as buf:
        saved = [m.id for m in buf.save_many([f"m{i}".encode() for i in range(total)], subject="fastfaults.r3")]

    with NatsCluster(3, base_dir=tmp_path / "cluster") as cluster:
        async def scenario() -> None:
            admin = await JetStreamTransport.connect(cluster.urls, reconnect_time_wait=0.1, timeout=2.0)
            await create_batched_stream(admin, "FASTR3", ["fastfaults.>"], replicas=3)
            transport = await connect_recording(cluster.urls, reconnect_time_wait=0.1, timeout=2.0)
            events: list[str] = []
            with pbuffer.open(url) as buf:
                relay = Relay(buf, transport, backoff_max=0.5, close_transport=False)
                drain: asyncio.Future[object] = asyncio.ensure_future(relay.drain())
                await transport.wait_acknowledged(1_500, drain)
                leader = cluster.node(await stream_leader(admin, "FASTR3"))
                in_flight = await mid_batch(transport, drain)
                leader.kill()
                killed_at = time.monotonic()
                events.append(f"kill -9 stream leader {leader.name} with {in_flight} in flight")
                resumed_at = await transport.wait_acknowledged_after(killed_at, drain)
                events.append(f"acknowledged again {resumed_at - killed_at:.2f} s after the kill")
                batched = transport.fast_ingested
                await batches_again(transport, batched, drain)
                await asyncio.to_thread(leader.start)
                stats = await asyncio.wait_for(drain, HANG_GUARD)
                pending, dead = len(buf), buf.dead_letters()
                await relay.close()
            await transport.close()

            await asyncio.to_thread(cluster.wait_healthy, HANG_GUARD)
            ids = await stream_ids(admin, "FASTR3", "fastfaults.r3")
            await admin.close()

            counted = check_drained(pending, dead, saved, ids)
            print(f"\n{total} messages in fast-ingest batches into an R3 stream:")
            for line in events:
                print(f"  {line}")
            print(f"  relay: {stats}; {transport.fast_ingested} confirmed by batch PubAcks; "
                  f"failures: {dict(transport.failures)}")
            print(f"  stream: {counted.in_stream} messages, every id once; in buffer order: {counted.in_order}")

        asyncio.run(scenario())
