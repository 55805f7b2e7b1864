"""Relays competing for one buffer: claims make each message published by exactly one of them.

Counted the Jepsen way: every id read back from the stream, and the relays' own reports of what the server
stored (``published``) and what it had already (``duplicates``: a second publish of one message). With claims, a
message is published once, so the duplicates stay at 0 while both relays live; a relay killed mid-window leaves
its claims to run out, and the survivor takes its messages over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pbuffer
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport

from .test_crashes import read_crash_stream

HERE = Path(__file__).resolve().parent


def fill(url: str, total: int) -> list[str]:
    with pbuffer.open(url) as buf:
        return [m.id for m in buf.save_many([f"m{i}".encode() for i in range(total)], subject="crash.test")]


def add_stream(server: NatsServer) -> None:
    async def setup() -> None:
        transport = await JetStreamTransport.connect(server.url)
        await transport.js.add_stream(name="CRASH", subjects=["crash.>"])
        await transport.close()

    asyncio.run(setup())


def start_relay(url: str, server: NatsServer, lease: float = 3.0) -> subprocess.Popen[str]:
    process = subprocess.Popen([sys.executable, str(HERE / "relay_process.py"), url, server.url, str(lease),
                                "--wait-go"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def go(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def report(process: subprocess.Popen[str]) -> tuple[int, int]:
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    words = out.split()
    return int(words[words.index("published") + 1]), int(words[words.index("duplicates") + 1])


@pytest.mark.slow
def test_two_relay_processes_publish_every_message_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    total = 20_000
    saved = fill(url, total)
    with NatsServer() as server:
        add_stream(server)
        one, two = start_relay(url, server), start_relay(url, server)
        go(one, two)
        (published_one, duplicates_one), (published_two, duplicates_two) = report(one), report(two)
        ids = asyncio.run(read_crash_stream(server))
    with pbuffer.open(url) as buf:
        assert len(buf) == 0 and buf.stats().pending == 0
    assert sorted(ids) == sorted(saved), "a message was lost or stored twice"
    assert published_one + published_two == total
    assert duplicates_one == duplicates_two == 0, "a message was published by both relays"
    assert published_one > 0 and published_two > 0, "one relay did all the work: nothing competed"
    print(f"{total} messages: {published_one} published by one relay, {published_two} by the other, 0 twice")


@pytest.mark.slow
def test_a_killed_relays_claims_run_out_and_the_other_takes_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    total = 100_000
    saved = fill(url, total)
    with NatsServer() as server:
        add_stream(server)
        victim, survivor = start_relay(url, server), start_relay(url, server)
        go(victim, survivor)
        # Kill once both relays hold claimed windows (not after a fixed time: a faster relay drained 20,000
        # messages before a 0.3 s sleep ended).
        with pbuffer.open(url) as buf:
            deadline = time.monotonic() + 60
            while (buf.claim_stats() or pbuffer.ClaimStats(0, 0, None, 0)).owners < 2:
                assert time.monotonic() < deadline, "the two relays never held claims at once"
                time.sleep(0.005)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        with pbuffer.open(url) as buf:
            left_when_killed = buf.stats().pending
        published, duplicates = report(survivor)  # waits out the victim's leases, then takes its windows
        ids = asyncio.run(read_crash_stream(server))
    assert 0 < left_when_killed < total, "the kill did not land mid-drain"
    with pbuffer.open(url) as buf:
        assert len(buf) == 0
    assert len(ids) == len(set(ids)), "a message is in the stream twice"
    assert sorted(ids) == sorted(saved), "a message was lost"
    print(f"{total} messages, one relay killed with {left_when_killed} pending: the survivor published "
          f"{published}, {duplicates} were already in the stream (the victim's last window), each id once")


def test_relays_on_a_server_database_share_the_queue(server_store_url: str) -> None:
    """PostgreSQL and MariaDB: claims taken with FOR UPDATE SKIP LOCKED, four relays with their own buffers."""
    total = 3_000
    saved = fill(server_store_url, total)
    with NatsServer() as server:
        add_stream(server)

        async def relays() -> list[pbuffer.RelayStats]:
            async def one() -> pbuffer.RelayStats:
                transport = await JetStreamTransport.connect(server.url)
                with pbuffer.open(server_store_url) as buf:
                    async with Relay(buf, transport, batch_size=50) as relay:
                        return await relay.drain()

            return await asyncio.gather(*(one() for _ in range(4)))

        stats = asyncio.run(relays())
        ids = asyncio.run(read_crash_stream(server))
    assert sorted(ids) == sorted(saved), "a message was lost or stored twice"
    assert sum(s.published for s in stats) == total
    assert sum(s.duplicates for s in stats) == 0, "a message was published by two relays"
    assert sum(1 for s in stats if s.published) >= 2, "one relay did all the work: nothing competed"
    print("per relay:", [s.published for s in stats])
