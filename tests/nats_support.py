"""What the tests that talk to a real nats-server share (the ``server`` fixture is in conftest.py): a transport that
reconnects quickly, and stream set-up."""

from __future__ import annotations

import asyncio

import nats.errors
from nats.errors import NoRespondersError
from nats.js.errors import ServiceUnavailableError

from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay.jetstream import JetStreamTransport


async def connect(server: NatsServer, **options: object) -> JetStreamTransport:
    """A transport to ``server`` that reconnects every 0.1 s (tests restart servers)."""
    return await JetStreamTransport.connect(server.url, reconnect_time_wait=0.1, **options)  # type: ignore[arg-type]


def add_stream(server: NatsServer, name: str, subjects: list[str]) -> None:
    """Create a stream, from synchronous test code."""

    async def run() -> None:
        transport = await JetStreamTransport.connect(server.url)
        await transport.js.add_stream(name=name, subjects=subjects)
        await transport.close()

    asyncio.run(run())


async def read_stream_ids(transport: JetStreamTransport, stream: str, subject: str = ">",
                          patience: float = 60.0) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in ``stream``, in stream order (an ephemeral pull consumer reads the
    whole stream; the count to read comes from stream info, so a short read fails instead of passing).

    Right after a cluster heals, the stream can answer while the new consumer has no leader yet: its pull requests
    get 503 "no responders" (seen once in CI after a leader kill). Such a read starts again with a new consumer, for
    up to ``patience`` seconds; a read that still cannot finish raises what it last raised."""
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        try:
            return await _read_stream_ids_once(transport, stream, subject)
        except (ServiceUnavailableError, NoRespondersError, nats.errors.TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def _read_stream_ids_once(transport: JetStreamTransport, stream: str, subject: str) -> list[str]:
    total = (await transport.js.stream_info(stream)).state.messages
    if not total:
        return []
    subscription = await transport.js.pull_subscribe(subject, stream=stream)
    try:
        found: list[str] = []
        while len(found) < total:
            for msg in await subscription.fetch(min(1000, total - len(found)), timeout=10):
                found.append(msg.headers["Nats-Msg-Id"] if msg.headers else "")
                await msg.ack()
        return found
    finally:
        await subscription.unsubscribe()
