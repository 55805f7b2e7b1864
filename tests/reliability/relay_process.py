"""A relay process that tests/reliability/test_crashes.py kills (-9) at random moments.

    python relay_process.py BUFFER_URL NATS_URL

Prints "ready" once connected, then drains the buffer (in small windows, so kills land mid-window) and exits.
"""

from __future__ import annotations

import asyncio
import sys

import pbuffer
from pbuffer.jetstream import JetStreamTransport


async def main(url: str, servers: str) -> None:
    transport = await JetStreamTransport.connect(servers)
    with pbuffer.open(url) as buf:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        async with pbuffer.Relay(buf, transport, batch_size=200) as relay:
            await relay.drain()


asyncio.run(main(sys.argv[1], sys.argv[2]))
