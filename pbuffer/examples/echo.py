"""The stream-echo example: publish/reply over JetStream, with every request saved to a pbuffer buffer first.

The server consumes ``<subject>`` from its stream with a durable pull consumer and answers each request with an
``EchoResponse`` on ``<subject>.reply``, acknowledging the request only after the reply was stored. The client
saves its ``EchoRequest`` to a buffer *before* touching the network, then publishes through the :class:`Relay`
(oldest first, ``Nats-Msg-Id`` = the message id, deleted from the buffer only after JetStream's ack), and prints
the responses. If NATS is unreachable, the request stays in the buffer and the next run sends it::

    python -m pbuffer.echo server hello -s nats://127.0.0.1:4222
    python -m pbuffer.echo client hello -d "hi there" -s nats://127.0.0.1:4222

Both ensure a stream named after the current user (sanitized: ``john.doe`` becomes ``john_doe``) covering
``<subject>`` and ``<subject>.reply``, unless a stream already covers them. A reply carries the request's id in
an ``Echo-Request-Id`` header, and its own ``Nats-Msg-Id`` is derived from it, so a request delivered twice (a
server that crashed between replying and acknowledging) is still answered once.

Client exit status: 0 every request answered; 1 an error; 2 a usage error; 3 requests are still in the buffer
(NATS unreachable: run again later); 4 requests were delivered to JetStream but not answered in time (no echo
server running? one that comes up later answers them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from google.protobuf.message import DecodeError  # type: ignore[import-untyped, unused-ignore]  # no types-protobuf
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from ..aio import AsyncBuffer
from ..errors import PBufferError, PublishError
from ..registry import open_buffer
from ..relay.drain import Relay
from ..relay.jetstream import JetStreamTransport
from .echo_pb2 import EchoRequest, EchoResponse

__all__ = [
    "DEFAULT_STREAM",
    "REQUEST_ID_HEADER",
    "ClientResult",
    "current_user_stream",
    "ensure_stream",
    "main",
    "reply_subject",
    "request",
    "serve",
    "stream_name_for_user",
]

_log = logging.getLogger("pbuffer.echo")

#: The stream name used when the user name is empty or unknown.
DEFAULT_STREAM = "pbuffer-echo"
#: The header on a reply naming the request (its pbuffer id, which is also its ``Nats-Msg-Id``).
REQUEST_ID_HEADER = "Echo-Request-Id"
_MAX_STREAM_NAME = 64
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_BUFFERED = 3
EXIT_UNANSWERED = 4


def stream_name_for_user(name: str | None) -> str:
    """A valid JetStream stream name for a user: every character other than ASCII letters, digits, ``_`` and
    ``-`` (``.``, ``*``, ``>``, whitespace, path separators...) becomes ``_``; empty becomes :data:`DEFAULT_STREAM`.
    """
    sanitized = _INVALID_NAME_CHARS.sub("_", name or "")[:_MAX_STREAM_NAME]
    return sanitized or DEFAULT_STREAM


def current_user_stream() -> str:
    """The stream name for the user running this process."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        user = ""
    return stream_name_for_user(user)


def reply_subject(subject: str) -> str:
    return f"{subject}.reply"


async def _covering_stream(js: JetStreamContext, subject: str) -> str | None:
    try:
        return await js.find_stream_name_by_subject(subject)
    except nats.js.errors.NotFoundError:
        return None


async def ensure_stream(js: JetStreamContext, subject: str, name: str | None = None) -> str:
    """Make sure a stream stores ``subject`` and its reply subject; returns the name of the stream for ``subject``.

    Idempotent. A subject some stream already covers is left where it is; the missing ones are added to the
    stream that covers ``subject``, else to the stream ``name`` (default: the current user's), created if needed.
    """
    wanted = [subject, reply_subject(subject)]
    covered = {s: await _covering_stream(js, s) for s in wanted}
    stream = covered[subject] or name or current_user_stream()
    missing = [s for s in wanted if covered[s] is None]
    if not missing:
        return stream
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        _log.info("creating stream %r for %s", stream, ", ".join(missing))
        try:
            await js.add_stream(StreamConfig(name=stream, subjects=missing))
            return stream
        except nats.js.errors.BadRequestError:  # created meanwhile by someone else: update it below
            info = await js.stream_info(stream)
    subjects = list(info.config.subjects or [])
    subjects += [s for s in missing if s not in subjects]
    _log.info("adding %s to stream %r", ", ".join(missing), stream)
    info.config.subjects = subjects
    await js.update_stream(info.config)
    return stream


async def _connect(servers: str | Sequence[str], creds: str | None, name: str) -> Client:
    async def on_error(exc: Exception) -> None:
        _log.warning("NATS connection error: %s: %s", type(exc).__name__, exc)

    options: dict[str, Any] = {
        "servers": [servers] if isinstance(servers, str) else list(servers),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "connect_timeout": 2,
        "error_cb": on_error,
    }
    if creds:
        options["user_credentials"] = creds
    return await nats.connect(**options)


# -------------------------------------------------------------------------------------------------------- server


async def _answer(js: JetStreamContext, msg: Msg, reply: str) -> bool:
    """Reply to one request, then acknowledge it; ``True`` if it was answered."""
    try:
        request = EchoRequest.FromString(msg.data)
    except DecodeError:
        _log.warning("dropping a message on %r that is not an EchoRequest (%d bytes)", msg.subject, len(msg.data))
        await msg.term()
        return False
    request_id = (msg.headers or {}).get("Nats-Msg-Id") or f"{msg.metadata.stream}-{msg.metadata.sequence.stream}"
    headers = {"Nats-Msg-Id": f"{request_id}.reply", REQUEST_ID_HEADER: request_id}
    payload = EchoResponse(message=request.message).SerializeToString()
    try:
        await js.publish(reply, payload, headers=headers)
    except Exception as exc:  # not stored: leave the request to be delivered again
        _log.warning("could not publish the reply to %s (%s: %s); it will be retried", request_id,
                     type(exc).__name__, exc)
        with contextlib.suppress(Exception):
            await msg.nak(delay=1)
        return False
    try:
        await msg.ack()
    except Exception as exc:  # redelivered later; the reply's Nats-Msg-Id keeps a second answer out
        _log.warning("could not acknowledge request %s (%s: %s)", request_id, type(exc).__name__, exc)
    _log.info("answered %s: %r", request_id, request.message)
    return True


async def serve(servers: str | Sequence[str], subject: str = "hello", *, creds: str | None = None,
                durable: str = "echo", stream: str | None = None, stop_event: asyncio.Event | None = None,
                batch: int = 32, ready: asyncio.Event | None = None) -> int:
    """Answer requests on ``subject`` until ``stop_event`` is set (or the task is cancelled).

    A durable pull consumer (``durable``) on the subject's stream reads every request not yet acknowledged,
    including those stored while no server ran. ``ready`` is set once the consumer exists. Returns how many
    requests this call answered.
    """
    stop = stop_event or asyncio.Event()
    reply = reply_subject(subject)
    answered = 0
    nc = await _connect(servers, creds, "pbuffer-echo-server")
    try:
        js = nc.jetstream()
        stream_name = await ensure_stream(js, subject, stream)
        config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, filter_subject=subject)
        sub = await js.pull_subscribe(subject, durable=durable, stream=stream_name, config=config)
        _log.info("echo server: consuming %r from stream %r as %r, replying on %r", subject, stream_name, durable,
                  reply)
        if ready is not None:
            ready.set()
        while not stop.is_set():
            try:
                messages = await sub.fetch(batch, timeout=1)
            except asyncio.TimeoutError:  # nothing to do (nats' TimeoutError derives from it)
                continue
            except Exception as exc:  # disconnected, reconnecting, a JetStream hiccup: nats-py reconnects
                if nc.is_closed:
                    raise
                _log.info("fetch failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in messages:
                answered += await _answer(js, msg, reply)
    finally:
        # Not nc.drain(): a pull subscription's drain waits for fetched messages nats-py never marks done.
        # Flushing sends the last acks; anything unacknowledged is delivered again to the next server.
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        if not nc.is_closed:
            await nc.close()
    return answered


# -------------------------------------------------------------------------------------------------------- client


@dataclass
class ClientResult:
    """What a client run did. ``responses``: request id -> response text, in arrival order; ``unanswered``:
    requests JetStream has but no response came for in time; ``buffered``: requests still in the buffer."""

    request_id: str
    responses: dict[str, str] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)
    buffered: int = 0
    #: Something went wrong after the requests were relayed (see the log).
    failed: bool = False

    @property
    def exit_code(self) -> int:
        if self.buffered:
            return EXIT_BUFFERED
        if self.failed:
            return EXIT_ERROR
        return EXIT_UNANSWERED if self.unanswered else EXIT_OK


async def request(servers: str | Sequence[str], subject: str = "hello", data: str = "hello world", *,
                  creds: str | None = None, url: str | None = None, stream: str | None = None,
                  timeout: float = 10.0) -> ClientResult:
    """Save an ``EchoRequest`` for ``data`` to the buffer at ``url`` (default: :func:`pbuffer.open`'s), relay
    everything the buffer holds for ``subject`` to JetStream, and wait up to ``timeout`` seconds in all for the
    responses, printing each one. Never loses the request: what could not be sent stays in the buffer.
    """
    deadline = time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    buffer = AsyncBuffer(await loop.run_in_executor(None, lambda: open_buffer(url, subject=subject)))
    try:
        saved = await buffer.save(EchoRequest(message=data).SerializeToString())
        _log.info("saved request %s on %r to the buffer", saved.id, subject)
        result = ClientResult(saved.id)
        try:
            # A client that cannot reach NATS says so (its requests are saved) and exits; connect() gives up
            # after a few attempts, and later drops are retried a few times only.
            transport = await JetStreamTransport.connect(servers, creds=creds, name="pbuffer-echo-client",
                                                         connect_timeout=max(0.5, min(2.0, timeout)),
                                                         max_reconnect_attempts=2, reconnect_time_wait=0.5)
        except PublishError as exc:
            result.buffered = await buffer.count()
            _log.warning("%s", exc)
            _log.warning("%d request(s) safely kept in the buffer; run the client again to send them",
                         result.buffered)
            return result
        try:
            await _exchange(transport, buffer, subject, stream=stream, deadline=deadline, result=result)
        except Exception as exc:  # a broken setup (no JetStream, no permission...): the requests stay saved
            _log.error("echo exchange failed: %s: %s", type(exc).__name__, exc)
            result.failed = True
        finally:
            await transport.close()
        result.buffered = await buffer.count()
        if result.buffered:
            _log.warning("%d request(s) not yet accepted by JetStream stay in the buffer; run the client again "
                         "to send them", result.buffered)
        elif result.unanswered:
            _log.warning("no response within %.0f s for %d request(s); JetStream has them, and an echo server "
                         "answers them when it runs", timeout, len(result.unanswered))
        return result
    finally:
        await buffer.close()


async def _exchange(transport: JetStreamTransport, buffer: AsyncBuffer, subject: str, *, stream: str | None,
                    deadline: float, result: ClientResult) -> None:
    js = transport.js
    await ensure_stream(js, subject, stream)
    responses: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_reply(msg: Msg) -> None:
        responses.put_nowait(msg)

    # Subscribed before anything is published, to new messages only: replies to earlier runs are not ours.
    sub = await js.subscribe(reply_subject(subject), cb=on_reply, ordered_consumer=True,
                             deliver_policy=DeliverPolicy.NEW)
    try:
        waiting = [m.id for m in await buffer.get_all()]  # this request and any left by earlier runs
        relay = Relay(buffer, transport, close_transport=False)
        draining = asyncio.ensure_future(relay.drain())
        await asyncio.wait({draining}, timeout=max(0.0, deadline - time.monotonic()))
        if not draining.done():
            relay.stop()
        stats = await draining
        await relay.close()
        _log.info("relayed %d request(s) (%d already in JetStream)", stats.published, stats.duplicates)
        left = {m.id for m in await buffer.get_all()}
        expected = [i for i in waiting if i not in left]
        while len(result.responses) < len(expected):
            try:
                msg = await asyncio.wait_for(responses.get(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            request_id = (msg.headers or {}).get(REQUEST_ID_HEADER)
            if request_id not in expected or request_id in result.responses:
                continue  # another client's reply, or a copy
            try:
                response = EchoResponse.FromString(msg.data)
            except DecodeError:
                _log.warning("ignoring a reply to %s that is not an EchoResponse", request_id)
                continue
            result.responses[request_id] = response.message
            print(f"Got response: '{response.message}'")
        result.unanswered = [i for i in expected if i not in result.responses]
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# ---------------------------------------------------------------------------------------------------------- CLI


def _servers(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pbuffer.echo", description="pbuffer's stream-echo example.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("server", "answer echo requests"), ("client", "send one echo request and print the answer")):
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument("subject", default="hello", nargs="?")
        sub.add_argument("-s", "--servers", default="nats://localhost:4222", help="comma-separated NATS URLs")
        sub.add_argument("--creds", default="", help="NATS credentials file")
        sub.add_argument("--stream", default=None,
                         help="stream to create if none covers the subject (default: named after the user)")
        sub.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    server, client = commands.choices["server"], commands.choices["client"]
    server.add_argument("--durable", default="echo", help="durable consumer name")
    client.add_argument("-d", "--data", default="hello world")
    client.add_argument("--url", default=None, help="buffer URL (default: $PBUFFER_URL or the user's buffer.db)")
    client.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the response")
    return parser


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await serve(_servers(args.servers), args.subject, creds=args.creds or None, durable=args.durable,
                stream=args.stream, stop_event=stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verbose:
        logging.getLogger("pbuffer").setLevel(logging.INFO)
    try:
        if args.command == "server":
            asyncio.run(_serve_until_signalled(args))
            return EXIT_OK
        result = asyncio.run(request(_servers(args.servers), args.subject, args.data, creds=args.creds or None,
                                     url=args.url, stream=args.stream, timeout=args.timeout))
        return result.exit_code
    except KeyboardInterrupt:
        return EXIT_ERROR
    except (PBufferError, nats.errors.Error, OSError, ValueError) as exc:
        _log.error("%s: %s", type(exc).__name__, exc)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
