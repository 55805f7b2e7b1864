"""Crash tests in the way Jepsen counts: every message whose save() returned is in the stream exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pbuffer
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport

HERE = Path(__file__).resolve().parent


async def stream_ids(transport: JetStreamTransport, stream: str, subject: str) -> list[str]:
    subscription = await transport.js.pull_subscribe(subject, stream=stream)
    total = (await transport.js.stream_info(stream)).state.messages
    found: list[str] = []
    while len(found) < total:
        for msg in await subscription.fetch(min(1000, total - len(found)), timeout=10):
            found.append(msg.headers["Nats-Msg-Id"])
            await msg.ack()
    await subscription.unsubscribe()
    return found


async def read_crash_stream(server: NatsServer) -> list[str]:
    transport = await JetStreamTransport.connect(server.url)
    ids = await stream_ids(transport, "CRASH", "crash.test")
    await transport.close()
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("durability", ["process", "power"])
def test_producer_killed_at_random_moments(tmp_path: Path, durability: str) -> None:
    """kill -9 the producer 20 times while it saves; then drain: every acknowledged save is there exactly once."""
    url = f"sqlite:///{tmp_path}/b.db?durability={durability}"
    pbuffer.open(url).close()
    rng = random.Random(int(os.environ.get("PBUFFER_CRASH_SEED", "20261127")))
    acknowledged: dict[int, str] = {}
    number = 0
    for _ in range(20):
        process = subprocess.Popen([sys.executable, str(HERE / "producer.py"), url, str(number)],
                                   stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.02, 0.5))  # a random point of its saving
        os.kill(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        for line in out.splitlines():
            if line.count(" ") == 1:  # a line cut by the kill is not an acknowledgement
                n, message_id = line.split(" ")
                acknowledged[int(n)] = message_id
        assert acknowledged, "the producer never saved anything"
        number = max(acknowledged) + 1_000_000  # fresh numbers: a half-reported save must not be confused
    conn = sqlite3.connect(tmp_path / "b.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with pbuffer.open(url) as buf:
        pending = {int(m.headers["N"]): m.id for m in buf.get_all()}
    missing = {n for n in acknowledged if pending.get(n) != acknowledged[n]}
    assert not missing, f"{len(missing)} acknowledged saves are not in the buffer"

    with NatsServer() as server:
        async def drain() -> list[str]:
            transport = await JetStreamTransport.connect(server.url)
            await transport.js.add_stream(name="CRASH", subjects=["crash.>"])
            with pbuffer.open(url) as buf:
                async with Relay(buf, transport, close_transport=False) as relay:
                    await relay.drain()
                assert len(buf) == 0
            ids = await stream_ids(transport, "CRASH", "crash.test")
            await transport.close()
            return ids

        ids = asyncio.run(drain())
    assert len(ids) == len(set(ids)), "a message is in the stream twice"
    assert set(acknowledged.values()) <= set(ids), "an acknowledged save never reached the stream"
    # Saves that were made but whose acknowledgement the kill cut off may be there too; nothing else may.
    assert set(ids) == set(pending.values())
    print(f"{len(acknowledged)} acknowledged saves over 20 kills, {len(ids)} in the stream")


@pytest.mark.slow
def test_relay_killed_at_random_moments(tmp_path: Path) -> None:
    """kill -9 the relay 20 times while it drains: every message exactly once, the buffer empty at the end."""
    url = f"sqlite:///{tmp_path}/b.db"
    saved: list[str] = []

    def keep_a_backlog() -> None:
        # However fast the relay drains, it never runs dry before its 20th kill (a fixed backlog did once).
        with pbuffer.open(url) as buf:
            if len(buf) < 30_000:
                start = len(saved)
                batch = [f"m{i}".encode() for i in range(start, start + 40_000)]
                saved.extend(m.id for m in buf.save_many(batch, subject="crash.test"))

    keep_a_backlog()
    rng = random.Random(int(os.environ.get("PBUFFER_CRASH_SEED", "20261127")))
    with NatsServer() as server:
        async def setup() -> None:
            transport = await JetStreamTransport.connect(server.url)
            await transport.js.add_stream(name="CRASH", subjects=["crash.>"])
            await transport.close()

        asyncio.run(setup())
        kills = 0
        while kills < 20:
            keep_a_backlog()
            process = subprocess.Popen([sys.executable, str(HERE / "relay_process.py"), url, server.url],
                                       stdout=subprocess.PIPE, text=True)
            assert process.stdout is not None and process.stdout.readline() == "ready\n"
            time.sleep(rng.uniform(0.01, 0.15))
            if process.poll() is not None:
                break  # it finished the drain before this kill
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        final = subprocess.run([sys.executable, str(HERE / "relay_process.py"), url, server.url],
                               capture_output=True, text=True, timeout=300, check=False)
        assert final.returncode == 0, final.stderr

        ids = asyncio.run(read_crash_stream(server))
    assert kills == 20, f"the relay finished after {kills} kills: make the backlog bigger"
    with pbuffer.open(url) as buf:
        assert len(buf) == 0 and buf.dead_letters() == []
    assert len(ids) == len(set(ids)), "a message is in the stream twice"
    assert sorted(ids) == sorted(saved), "a message was lost"
    conn = sqlite3.connect(tmp_path / "b.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    print(f"{len(saved)} messages, {kills} relay kills: each once in the stream; in buffer order: {ids == saved}")


def test_ids_across_a_recreated_buffer_file(tmp_path: Path) -> None:
    """A buffer file deleted and made again must not reuse ids: the server would drop new messages as duplicates."""
    path = tmp_path / "b.db"
    with NatsServer() as server:
        async def round_trip() -> list[str]:
            transport = await JetStreamTransport.connect(server.url)
            with contextlib.suppress(Exception):
                await transport.js.add_stream(name="CRASH", subjects=["crash.>"])
            with pbuffer.open(f"sqlite:///{path}") as buf:
                saved = [m.id for m in buf.save_many([b"same payload"] * 500, subject="crash.test")]
                async with Relay(buf, transport, close_transport=False) as relay:
                    stats = await relay.drain()
                assert stats.duplicates == 0, "a new message was taken for a duplicate"
            await transport.close()
            return saved

        first = asyncio.run(round_trip())
        for leftover in tmp_path.glob("b.db*"):
            leftover.unlink()  # the file is gone; a new one starts from scratch
        second = asyncio.run(round_trip())

        ids = asyncio.run(read_crash_stream(server))
    assert not set(first) & set(second)
    assert ids == first + second
