"""The JetStream transport over nats-py: pipelined publishes, every ack awaited with a timeout and read here, and
nats-py's exceptions and the server's replies mapped into transient or permanent failures (:mod:`.replies`).

Publishes go out as core NATS publishes with a reply subject under one inbox prefix of this transport; one
subscription on that prefix reads every reply and parses it itself. The publish commands are written here
(:mod:`.frames`: ``HPUB`` with the ``Nats-Msg-Id`` header, byte for byte what nats-py writes) and handed to nats-py a
chunk at a time (:func:`.natscompat.send_publishes`), about a fifth of the client CPU of nats-py's ``publish()``.
nats-py's own ``publish_async`` is not used: its reply handler raises on a publish error reply (nats.py issue #985),
so the server's "400: maximum message size exceeded" or "503: maximum messages exceeded" never reached the relay and
every try ended as a 5 s timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from .. import ids
from ..errors import PublishError
from ..message import Message
from .connecting import close_client, open_client, warn_if_replaying
from .fast_ingest import BatchOutcome, FastBatch, StreamModes, publish_batch
from .frames import CHUNK_BYTES, ID_HEADER_BYTES, command_head, header_size, is_api_subject, is_plain, too_large
from .natscompat import check_client, deliver_inline, send_publishes, stop_inline
from .replies import Acks, classify, parse_reply
from .transport import PublishResult, Transport

__all__ = ["JetStreamTransport", "classify", "parse_reply"]

_log = logging.getLogger("pbuffer.jetstream")

class JetStreamTransport(Transport):
    """Publishes to JetStream through a nats-py connection.

    Build it with :meth:`connect` (pbuffer owns the connection) or from an existing ``nats.aio.client.Client``
    (the caller owns it and its settings: nats-py replays publishes it held while disconnected, which can reorder a
    subject after a reconnect; a WARNING says so when it buffers publishes, ``pending_size`` above 0, and even at 0
    what was queued at the moment of a disconnect is replayed, which only :meth:`connect`'s connection drops). Each
    ``publish`` sends the whole batch (many in flight) and waits for every reply at most ``timeout`` seconds; a
    missing reply is a transient failure whose outcome is unknown. Every reply is read here:
    a PubAck (stored or duplicate), a JetStream error (400: permanent, dead-lettered with the server's
    description; anything else: transient), the no-responders status (no stream, transient), or anything that is
    not a PubAck (permanent: whatever answered is not a stream).

    A message whose payload plus headers exceeds the server's ``max_payload`` (read from the connection's INFO at
    every publish, so a reconnect to another server is seen) is failed permanently before it is sent: the server
    would drop the whole connection for it. A connection nats-py closed for good (a server ``-ERR``, refused
    credentials, reconnect attempts used up) is opened again with the same options when pbuffer owns it, with a
    WARNING naming the cause at most once a minute while it cannot be.

    Fast-ingest batches (:mod:`pbuffer.relay.fast_ingest`): the messages of a window whose subjects map to a stream with
    ``allow_batched`` go as one fast-ingest batch per stream (gap mode ``fail``, committed with the window's last
    message), the others one by one, at the same time. A subject's stream and whether it allows batches are read
    when the transport first meets the subject, again at least once a minute, and at once after a no-stream
    failure or a batch the stream refused. Messages of a batch are acknowledged only by its final PubAck; after any
    error, gap, timeout or disconnect the messages it did not confirm go one by one in the same call (the server
    drops copies it already has by ``Nats-Msg-Id``). A batch sees no duplicates: those it confirms are reported
    stored, all with the batch's final stream sequence. ``fast_ingest=False`` turns batches off.
    """

    #: Opens a new connection with the options :meth:`connect` was given (None: the caller owns the connection).
    _reopen: Callable[[], Awaitable[Client]] | None = None

    def __init__(self, nc: Client, *, timeout: float = 5.0, owns_connection: bool = False,
                 fast_ingest: bool = True) -> None:
        if not isinstance(nc, Client):
            raise TypeError(f"JetStreamTransport takes a connected nats.aio.client.Client, not {type(nc).__name__}"
                            " (a JetStream context is made from the client)")
        check_client(nc)
        if not owns_connection:
            warn_if_replaying(nc)
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self._owns_connection = owns_connection
        #: Publishes of the windows being awaited (sent, their window not settled yet).
        self.in_flight = 0
        self._inbox = ""
        self._replies: Any = None  # the subscription on <inbox>.*
        #: The publish calls awaiting replies; a reply's token says which call and which message.
        self._open: list[Acks] = []
        self._next_token = 0
        self._warned_closed = -1e9
        self._jetstream_checked = (-1e9, True)  # (when, whether $JS.API.INFO answered)
        #: Publish a window's messages for a stream with ``allow_batched`` as one fast-ingest batch.
        self.fast_ingest = fast_ingest
        #: Messages confirmed by the final PubAck of a fast-ingest batch (the others went one by one).
        self.fast_ingested = 0
        self._modes = StreamModes(timeout=min(timeout, 2.0))
        self._fast_inbox = ""
        self._fast_replies: Any = None  # the subscription on <fast inbox>.>
        self._batches: dict[str, FastBatch] = {}
        #: Streams whose last batch got no answer in time: their next window goes one by one (the fallback of a
        #: batch that timed out, kept out of that call so no publish call waits more than about ``timeout``).
        self._after_timeout: set[str] = set()

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        creds: str | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        nkeys_seed: str | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        ping_interval: float = 20,
        max_outstanding_pings: int = 2,
        reconnect_time_wait: float = 2,
        max_reconnect_attempts: int = -1,
        connect_timeout: float = 2,
        connect_attempts: int = 3,
        timeout: float = 5.0,
        name: str = "pbuffer",
        fast_ingest: bool = True,
    ) -> JetStreamTransport:
        """Connect to NATS: ``connect_attempts`` tries per server (at least 2), then
        :class:`~pbuffer.PublishError`; refused credentials or an untrusted certificate fail at once. Once
        connected it never stops reconnecting by default (``max_reconnect_attempts=-1``): a relay outlives
        outages, and its messages wait in the buffer meanwhile. Should nats-py close the connection for good anyway,
        the transport opens a new one with the same options at its next publish.

        Credentials are passed to nats-py as given and never logged. ``fast_ingest=False`` publishes every message
        on its own even into streams that allow fast-ingest batches.
        """
        options: dict[str, Any] = {
            "servers": [servers] if isinstance(servers, str) else list(servers),
            "name": name,
            # No buffering of publishes while disconnected: they fail at once (a transient failure) and stay
            # in the pbuffer buffer, which is where a message waits for a server.
            "pending_size": 0,
            "ping_interval": ping_interval,
            "max_outstanding_pings": max_outstanding_pings,
            "reconnect_time_wait": reconnect_time_wait,
            # nats-py uses one setting for the first connect and for reconnects, and -1 would make the first
            # connect to a dead server hang forever: bounded here, switched to the caller's value below.
            # (0 would mean "no limit" to nats-py, so at least two attempts are made.)
            "max_reconnect_attempts": max(connect_attempts - 1, 1),
            "connect_timeout": connect_timeout,
            "allow_reconnect": True,
        }
        for key, value in (("user_credentials", creds), ("user", user), ("password", password),
                           ("token", token), ("nkeys_seed", nkeys_seed), ("tls", tls),
                           ("tls_hostname", tls_hostname)):
            if value is not None:
                options[key] = value

        async def connect_again() -> Client:
            return await open_client(options, max_reconnect_attempts)

        # Set after construction: subclasses whose __init__ predates the option keep working.
        transport = cls(await connect_again(), timeout=timeout, owns_connection=True)
        transport.fast_ingest = fast_ingest
        transport._reopen = connect_again
        return transport

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        if self.nc.is_closed:
            reason = await self._open_again()
            if reason is not None:
                return [PublishResult.failed(reason, transient=True, kind="disconnected") for _ in messages]
        if not self.nc.is_connected:
            # Nothing is queued while disconnected (see connect): the whole window waits in the buffer.
            return [PublishResult.failed("not connected to NATS", transient=True, kind="disconnected")
                    for _ in messages]
        try:
            await self._subscribe_replies()
        except Exception as exc:  # the connection went away between the check and the subscribe
            return [classify(exc, message) for message in messages]
        batched = await self._batched_streams(messages) if self.fast_ingest and len(messages) > 1 else None
        if not batched:
            results = await self._publish_each(messages)
        else:
            results = await self._publish_batched(messages, batched)
        self._forget_unstreamed(messages, results)
        return results

    async def _publish_each(self, messages: Sequence[Message]) -> list[PublishResult]:
        """The per-message pipeline: every message its own publish and PubAck, all in flight at once.

        The publishes are written here (:mod:`.frames`), a chunk at a time; reply subject ``<inbox>.<token>``,
        the tokens of a call consecutive, so a reply finds its message by arithmetic. One timer bounds the wait for
        every reply of the call."""
        loop = asyncio.get_running_loop()
        acks = Acks(self._next_token, len(messages), loop.create_future())
        self._next_token += len(messages)
        self._open.append(acks)
        try:
            await self._send_each(messages, acks)
            acks.sending = False
            if acks.remaining > 0:
                timer = loop.call_later(self.timeout, acks.expire)
                try:
                    await acks.done
                finally:
                    timer.cancel()
        finally:
            self.in_flight -= acks.sent
            self._open.remove(acks)
        results: list[PublishResult] = []
        for message, result in zip(messages, acks.results, strict=True):
            if result is None:
                results.append(classify(asyncio.TimeoutError(), message))
            elif result.failure is not None and result.failure.no_stream:
                results.append(await self._explain(result, message))
            else:
                results.append(result)
        return results

    async def _send_each(self, messages: Sequence[Message], acks: Acks) -> None:
        """Send every message of ``acks``'s call (reply ``<inbox>.<token>``), counting it in ``acks`` before it is
        handed to nats-py (its reply may come while nats-py flushes); one that is refused or cannot be sent gets
        its result at once."""
        nc = self.nc
        max_payload = nc.max_payload
        results = acks.results
        base = acks.base
        prefix = f"{self._inbox}."
        frames: list[bytes] = []
        chunk: list[int] = []  # indexes of the messages in frames
        chunk_bytes = payload_bytes = 0

        async def flush() -> None:
            nonlocal chunk_bytes, payload_bytes
            acks.sending_more(len(chunk))
            self.in_flight += len(chunk)
            try:
                await send_publishes(nc, b"".join(frames), len(chunk), payload_bytes)
            except Exception as exc:  # not connected any more...: none of this chunk was queued
                for index in chunk:
                    acks.reply(index, classify(exc, messages[index]))
            frames.clear()
            chunk.clear()
            chunk_bytes = payload_bytes = 0

        for index, message in enumerate(messages):
            if not is_plain(message) or is_api_subject(message.subject):
                # Through nats-py (its own checks and exceptions), after what was built before it.
                if chunk:
                    await flush()
                refused = self._refused_before_sending(message, max_payload)
                if refused is not None:
                    results[index] = refused
                    continue
                acks.sending_more(1)
                self.in_flight += 1
                try:
                    await nc.publish(message.subject, message.payload, reply=f"{prefix}{base + index}",
                                     headers={**message.headers, "Nats-Msg-Id": message.id})
                except Exception as exc:  # not connected any more, a bad header...: this message only
                    acks.reply(index, classify(exc, message))
                continue
            payload = message.payload
            size = len(payload) + ID_HEADER_BYTES
            if size > max_payload:
                results[index] = too_large(size, max_payload)
                continue
            frames.append(command_head(message.subject, f"{prefix}{base + index}", message.id, size))
            frames.append(payload)
            frames.append(b"\r\n")
            chunk.append(index)
            payload_bytes += len(payload)
            chunk_bytes += size
            if chunk_bytes >= CHUNK_BYTES:
                await flush()
        if chunk:
            await flush()

    # ------------------------------------------------------------------------------------ fast-ingest batches

    async def _batched_streams(self, messages: Sequence[Message]) -> dict[str, str] | None:
        """The streams that allow fast-ingest batches, by subject, for the subjects of ``messages`` (None: none)."""
        found: dict[str, str] = {}
        for subject in {message.subject for message in messages}:
            stream = await self._modes.batched_stream(self.nc, subject)
            if stream is not None:
                found[subject] = stream
        return found or None

    async def _publish_batched(self, messages: Sequence[Message], batched: Mapping[str, str]
                               ) -> list[PublishResult]:
        """One fast-ingest batch per stream that allows them, the other messages one by one, all at once; a batch
        that ends early falls back to the per-message pipeline for every message its PubAck did not confirm."""
        results: list[PublishResult | None] = [None] * len(messages)
        by_stream: dict[str, list[int]] = {}
        single: list[int] = []
        max_payload = self.nc.max_payload
        for index, message in enumerate(messages):
            stream = batched.get(message.subject)
            if stream is None or stream in self._after_timeout:
                single.append(index)
                continue
            refused = self._refused_before_sending(message, max_payload)
            if refused is not None:
                results[index] = refused
            else:
                by_stream.setdefault(stream, []).append(index)

        async def one_by_one(indexes: Sequence[int]) -> None:
            if indexes:
                for index, result in zip(indexes, await self._publish_each([messages[i] for i in indexes]),
                                         strict=True):
                    results[index] = result

        async def as_batch(indexes: list[int]) -> None:
            if len(indexes) < 2:  # a batch of one is a plain publish with extra steps
                await one_by_one(indexes)
                return
            outcome = await self._send_batch([messages[i] for i in indexes])
            assert outcome.stream is not None or outcome.confirmed == 0
            self.fast_ingested += outcome.confirmed
            stored = PublishResult.stored(outcome.stream or "", outcome.sequence)  # immutable: one for all
            for index in indexes[:outcome.confirmed]:
                results[index] = stored
            if outcome.timed_out:
                # Outcome unknown, and the call's time is up: the relay retries these from the oldest, and that
                # window goes one by one.
                self._after_timeout.add(outcome.stream or batched[messages[indexes[0]].subject])
                _log.info("fast-ingest batch of %d message(s) ended after %d confirmed (%s); the next window of its "
                          "stream goes one by one", len(indexes), outcome.confirmed, outcome.failure)
                for index in indexes[outcome.confirmed:]:
                    results[index] = classify(asyncio.TimeoutError(), messages[index])
            elif outcome.failure is not None:
                if outcome.stale_mode:
                    self._modes.forget({messages[i].subject for i in indexes})
                _log.info("fast-ingest batch of %d message(s) ended after %d confirmed (%s); publishing the rest "
                          "one by one", len(indexes), outcome.confirmed, outcome.failure)
                await one_by_one(indexes[outcome.confirmed:])

        await asyncio.gather(one_by_one(single), *(as_batch(indexes) for indexes in by_stream.values()))
        done = [result for result in results if result is not None]
        assert len(done) == len(messages)
        if self._after_timeout:
            # A stream whose window went one by one after a timeout gets batches again once one succeeded whole.
            outcomes: dict[str, bool] = {}
            for index in single:
                stream = batched.get(messages[index].subject)
                if stream is not None:
                    outcomes[stream] = outcomes.get(stream, True) and done[index].acknowledged
            self._after_timeout -= {stream for stream, succeeded in outcomes.items() if succeeded}
        return done

    async def _send_batch(self, messages: Sequence[Message]) -> BatchOutcome:
        batch = FastBatch(ids.new_id(), len(messages))
        self._batches[batch.batch_id] = batch
        sent = 0

        def on_sent(count: int) -> None:
            nonlocal sent
            sent += count
            self.in_flight += count

        try:
            return await publish_batch(self.nc, self._fast_inbox, batch, messages, self.timeout, on_sent)
        finally:
            self.in_flight -= sent
            # Late replies of an abandoned batch (a timeout, a fallback) are dropped from now on.
            del self._batches[batch.batch_id]

    def _forget_unstreamed(self, messages: Sequence[Message], results: Sequence[PublishResult]) -> None:
        """After a no-stream failure, read the subject's stream again next time: a stream created meanwhile may
        allow batches."""
        for message, result in zip(messages, results, strict=True):
            if result.failure is not None and result.failure.no_stream:
                self._modes.forget([message.subject])

    def _refused_before_sending(self, message: Message, max_payload: int) -> PublishResult | None:
        """A permanent failure for a message the server must never get: a server API subject, or more than
        ``max_payload`` bytes of payload plus headers (the server would drop the connection for it)."""
        if is_api_subject(message.subject):
            return PublishResult.failed(
                f"refused: {message.subject!r} is a NATS server API subject; publishing there would make the server "
                "act (purge, delete...), not store a message", transient=False)
        # The common case (no headers of its own, a 36-character id; see frames.is_plain) is one constant.
        size = len(message.payload) + (ID_HEADER_BYTES if is_plain(message)
                                       else header_size({**message.headers, "Nats-Msg-Id": message.id}))
        if size > max_payload:
            return too_large(size, max_payload)
        return None

    async def duplicate_window(self, subject: str) -> float | None:
        try:
            stream = await self.js.find_stream_name_by_subject(subject)
            info = await self.js.stream_info(stream)
        except Exception:  # unknown is an answer: the relay only warns with it
            return None
        window = info.config.duplicate_window
        return float(window) if window is not None else None

    async def close(self) -> None:
        if self._replies is not None:
            stop_inline(self.nc, self._replies)
        for subscription in (self._replies, self._fast_replies):
            if subscription is not None and not self.nc.is_closed:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        self._replies = self._fast_replies = None
        self._modes.close()
        if self._owns_connection and not self.nc.is_closed:
            await close_client(self.nc, self.timeout)

    # ------------------------------------------------------------------------------------------------ internals

    async def _subscribe_replies(self) -> None:
        """One subscription for every reply (and one for fast-ingest batches' replies); nats-py re-subscribes
        them by itself after a reconnect."""
        if self._replies is None:
            self._inbox = self.nc.new_inbox()
            # Generous pending limits: a reply dropped as a "slow consumer" would cost a timeout and a retry.
            self._replies = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply, pending_msgs_limit=-1,
                                                    pending_bytes_limit=-1)
            # Read as nats-py parses them, not through the subscription's queue and task (_on_reply stays the
            # callback, for any reply that would still come that way).
            deliver_inline(self.nc, self._replies, self._on_raw_reply)
        if self._fast_replies is None and self.fast_ingest:
            # Batches answer on <fast inbox>.<batch id>.<flow>.<gap mode>.<batch seq>.<op>.$FI.
            self._fast_inbox = self.nc.new_inbox()
            self._fast_replies = await self.nc.subscribe(f"{self._fast_inbox}.>", cb=self._on_fast_reply,
                                                         pending_msgs_limit=-1, pending_bytes_limit=-1)

    async def _on_reply(self, msg: Msg) -> None:
        self._on_raw_reply(msg.subject.encode(), msg.data, msg.headers)

    def _on_raw_reply(self, subject: bytes, data: bytes, headers: dict[str, str] | None) -> None:
        """A reply on ``<inbox>.<token>``: the result of the message that has the token, if its call still waits."""
        try:
            token = int(subject.rpartition(b".")[2])
        except ValueError:
            return
        for acks in self._open:
            if acks.base <= token < acks.end:
                acks.reply(token - acks.base, parse_reply(data, headers))
                return

    async def _on_fast_reply(self, msg: Msg) -> None:
        batch = self._batches.get(msg.subject[len(self._fast_inbox) + 1:].partition(".")[0])
        if batch is not None:
            batch.on_reply(msg.data, msg.headers)

    async def _explain(self, result: PublishResult, message: Message) -> PublishResult:
        """Name the subject in a no-stream failure, and say so when the cause is JetStream being off."""
        if result.failure is None or not result.failure.no_stream:
            return result
        if not await self._jetstream_enabled():
            return PublishResult.failed(f"JetStream is not enabled on the NATS server, so no stream can take subject "
                                        f"{message.subject!r} (start nats-server with JetStream: -js)",
                                        transient=True, no_stream=True)
        return classify(nats.errors.NoRespondersError(), message)

    async def _jetstream_enabled(self) -> bool:
        """Whether $JS.API.INFO answers, asked at most every 30 s (only after a no-responders reply)."""
        asked, enabled = self._jetstream_checked
        if time.monotonic() - asked < 30:
            return enabled
        try:
            await self.nc.request("$JS.API.INFO", b"", timeout=min(self.timeout, 2.0))
            enabled = True
        except nats.errors.NoRespondersError:
            enabled = False
        except Exception:  # a timeout or a disconnect says nothing either way
            enabled = True
        self._jetstream_checked = (time.monotonic(), enabled)
        return enabled

    async def _open_again(self) -> str | None:
        """Open a new connection for one nats-py closed for good; None when connected again, else why not."""
        cause = self.nc.last_error
        why = f"{type(cause).__name__}: {cause}" if cause is not None else "closed"
        if self._reopen is None:
            reason = (f"the NATS connection is closed ({why}) and belongs to the caller: open a new one; "
                      "messages stay buffered")
        else:
            try:
                nc = await self._reopen()
            except PublishError as exc:
                reason = f"the NATS connection was closed ({why}) and cannot be opened again: {exc}"
            else:
                self.nc, self.js = nc, nc.jetstream(timeout=self.timeout)
                self._replies = self._fast_replies = None
                _log.warning("the NATS connection was closed (%s); opened a new one", why)
                self._warned_closed = -1e9
                return None
        if time.monotonic() - self._warned_closed >= 60:  # a WARNING a minute: never silent, never a flood
            self._warned_closed = time.monotonic()
            _log.warning("%s", reason)
        return reason
