"""The relay of the order service, as a process of its own: publishes committed "order created" events to JetStream.

    python examples/outbox_orders/relay.py postgresql+psycopg://postgres@127.0.0.1/shop nats://127.0.0.1:4222

On PostgreSQL it wakes at each commit of the application (LISTEN/NOTIFY), so an event is published within
milliseconds of its order's commit; it also looks every ``--poll`` seconds. Stops on SIGTERM or Ctrl-C, after the
window in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import pbuffer
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport


async def run(url: str, nats_url: str, poll: float) -> None:
    buffer = pbuffer.open(url)
    try:
        transport = await JetStreamTransport.connect(nats_url)
        async with Relay(buffer, transport, poll_interval=poll) as relay:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, relay.stop)
            print("relay running", flush=True)
            await relay.run()
    finally:
        buffer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the application's database, where the buffer lives")
    parser.add_argument("nats_url")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks when nothing woke it")
    args = parser.parse_args(argv)
    asyncio.run(run(args.url, args.nats_url, args.poll))
    return 0


if __name__ == "__main__":
    sys.exit(main())
