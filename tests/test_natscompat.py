"""nats-py's private state that pbuffer relies on: this fails loudly when a nats-py release changes it."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client

from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay.jetstream import JetStreamTransport
from pbuffer.relay.natscompat import check_client, drop_unsent_publishes


def test_the_private_state_exists_and_unsent_publishes_are_dropped() -> None:
    with NatsServer() as server:
        async def scenario() -> None:
            nc = Client()
            await nc.connect(server.url)
            check_client(nc)  # raises if nats-py renamed what drop_unsent_publishes uses
            # Commands nats-py holds before its flusher writes them: two publishes and a subscription.
            nc._pending = [b"PUB a 1\r\nx\r\n", b"SUB b 9\r\n", b"HPUB c 12 13\r\nNATS/1.0\r\n\r\ny\r\n"]
            nc._pending_data_size = sum(len(c) for c in nc._pending)
            drop_unsent_publishes(nc)
            assert nc._pending == [b"SUB b 9\r\n"] and nc._pending_data_size == len(b"SUB b 9\r\n")
            await nc.close()

        asyncio.run(scenario())


def test_a_client_without_that_state_is_refused() -> None:
    class Renamed(Client):
        def __getattribute__(self, name: str) -> object:
            if name == "_pending":
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(RuntimeError, match="_pending"):
        check_client(Renamed())


def test_the_transport_takes_a_client_and_nothing_else() -> None:
    nc = Client()
    with pytest.raises(TypeError, match=r"nats\.aio\.client\.Client"):
        JetStreamTransport(nc.jetstream())  # type: ignore[arg-type]
