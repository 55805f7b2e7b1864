"""A relay process for the reliability tests: killed (-9) at random moments, or run beside a competing one.

    python relay_process.py BUFFER_URL NATS_URL [LEASE] [--wait-go]

Prints "ready" once connected (with --wait-go, then waits for a line on stdin, so competing relays start
together), drains the buffer in small windows (so kills land mid-window), prints "published N duplicates M" and
exits. LEASE (seconds, default 3) is how long its claims outlive it when it is killed.
"""

from __future__ import annotations

import asyncio
import sys

import pbuffer
from pbuffer.relay.jetstream import JetStreamTransport


async def main(url: str, servers: str, lease: float, wait_go: bool) -> None:
    transport = await JetStreamTransport.connect(servers)
    with pbuffer.open(url) as buf:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        if wait_go:
            sys.stdin.readline()
        async with pbuffer.Relay(buf, transport, batch_size=200, lease=lease, backoff_max=min(1.0, lease / 2),
                                 poll_interval=0.2) as relay:
            stats = await relay.drain()
    sys.stdout.write(f"published {stats.published} duplicates {stats.duplicates}\n")
    sys.stdout.flush()


arguments = [a for a in sys.argv[1:] if a != "--wait-go"]
asyncio.run(main(arguments[0], arguments[1], float(arguments[2]) if len(arguments) > 2 else 3.0,
                 "--wait-go" in sys.argv))
