"""nats-py's private state that pbuffer relies on: this fails loudly when a nats-py release changes it."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from pbuffer import ids
from pbuffer.examples.natsserver import NatsServer
from pbuffer.message import NO_HEADERS, Message
from pbuffer.relay.fast_ingest import FastBatch, publish_batch
from pbuffer.relay.jetstream import JetStreamTransport
from pbuffer.relay.natscompat import check_client, deliver_inline, drop_unsent_publishes, send_publishes, stop_inline


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


@pytest.mark.parametrize("renamed", ["_pending", "_pending_data_size", "_send_command", "_flush_pending",
                                     "_flush_queue", "_max_pending_size", "_process_msg", "_process_headers"])
def test_a_client_without_that_state_is_refused(renamed: str) -> None:
    class Renamed(Client):
        def __getattribute__(self, name: str) -> object:
            if name == renamed:
                raise AttributeError(name)
            return super().__getattribute__(name)

    with pytest.raises(RuntimeError, match=renamed):
        check_client(Renamed())


def test_the_transport_takes_a_client_and_nothing_else() -> None:
    nc = Client()
    with pytest.raises(TypeError, match=r"nats\.aio\.client\.Client"):
        JetStreamTransport(nc.jetstream())  # type: ignore[arg-type]


def test_the_publishes_pbuffer_writes_are_byte_for_byte_nats_pys() -> None:
    """The relay writes its HPUB commands itself (pbuffer.relay.frames); on the wire they must be what nats-py's
    publish() writes for the same message and reply subject, in the same order, whether a message is written by
    pbuffer or (headers of its own) handed to nats-py."""
    plain = [Message(ids.new_id(), "orders.created", f"order {i}".encode(), NO_HEADERS, 0) for i in range(5)]
    own = Message(ids.new_id(), "orders.paid", b"", MappingProxyType({"Trace": "t-1"}), 0)
    messages = [*plain[:3], own, *plain[3:]]

    with NatsServer() as server:
        async def scenario() -> None:
            transport = await JetStreamTransport.connect(server.url, timeout=0.2)
            nc = transport.nc
            await transport._subscribe_replies()
            written: list[bytes] = []

            async def capture(cmd: bytes, priority: bool = False) -> None:
                if cmd.startswith(b"HPUB "):  # (not the stream lookup's SUB and PUB)
                    written.append(bytes(cmd))

            nc._send_command = capture  # type: ignore[method-assign]  # nothing reaches the server: no replies
            results = await transport.publish(messages)
            assert all(r.failure is not None and r.failure.kind == "timeout" for r in results)
            fast = FastBatch("b" * 36, len(messages))
            outcome = await publish_batch(nc, transport._fast_inbox, fast, messages, 0.2)
            assert outcome.timed_out
            ours = b"".join(written)
            written.clear()
            # What nats-py writes for the same messages and reply subjects (the per-message tokens start at 0).
            for token, message in enumerate(messages):
                await nc.publish(message.subject, message.payload, reply=f"{transport._inbox}.{token}",
                                 headers={**message.headers, "Nats-Msg-Id": message.id})
            last = len(messages)
            for seq, message in enumerate(messages, start=1):
                op = 0 if seq == 1 else 2 if seq == last else 1
                await nc.publish(message.subject, message.payload,
                                 reply=f"{transport._fast_inbox}.{'b' * 36}.500.fail.{seq}.{op}.$FI",
                                 headers={**message.headers, "Nats-Msg-Id": message.id})
            assert ours == b"".join(written)
            assert ours.count(b"HPUB ") == 2 * len(messages)
            await transport.close()

        asyncio.run(scenario())


def test_publishes_are_refused_as_nats_py_refuses_them() -> None:
    """send_publishes makes publish()'s checks: nothing is queued on a closed or disconnected connection."""
    nc = Client()  # never connected: no room to hold publishes (pending_size is set by connect)
    with pytest.raises(nats.errors.OutboundBufferLimitError):
        asyncio.run(send_publishes(nc, b"PUB a 1\r\nx\r\n", 1, 1))
    assert nc._pending == []
    nc._status = Client.CLOSED
    with pytest.raises(nats.errors.ConnectionClosedError):
        asyncio.run(send_publishes(nc, b"PUB a 1\r\nx\r\n", 1, 1))


def test_replies_are_read_as_nats_py_parses_them() -> None:
    """deliver_inline: a subscription's messages reach the handler from nats-py's reader (not its callback), with the
    headers nats-py reads (a no-responders status too); other subscriptions are untouched; stop_inline ends it."""
    with NatsServer() as server:
        async def scenario() -> None:
            nc = Client()
            await nc.connect(server.url)
            inline: list[tuple[bytes, bytes, dict[str, str] | None]] = []
            through_callback: list[str] = []

            async def callback(msg: Msg) -> None:
                through_callback.append(msg.subject)

            ours = await nc.subscribe("replies.*", cb=callback)
            other = await nc.subscribe("other.*", cb=callback)
            deliver_inline(nc, ours, lambda subject, data, headers: inline.append((subject, data, headers)))
            await nc.publish("replies.1", b"one")
            await nc.publish("replies.2", b"two", headers={"K": "v"})
            await nc.publish("other.1", b"x")
            # No stream and no service on this subject: the server's no-responders status comes to the reply.
            await nc.publish("nobody.listens", b"", reply="replies.3", headers={"Nats-Msg-Id": "x"})
            await nc.flush()
            await asyncio.sleep(0.2)
            assert inline[:2] == [(b"replies.1", b"one", None), (b"replies.2", b"two", {"K": "v"})]
            assert len(inline) == 3 and inline[2][:2] == (b"replies.3", b"")
            assert inline[2][2] is not None and inline[2][2]["Status"] == "503"
            assert through_callback == ["other.1"]
            stop_inline(nc, ours)
            await nc.publish("replies.4", b"four")
            await nc.flush()
            await asyncio.sleep(0.2)
            assert len(inline) == 3 and through_callback == ["other.1", "replies.4"]
            await other.unsubscribe()
            await nc.close()

        asyncio.run(scenario())
