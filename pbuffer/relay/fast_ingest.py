"""Fast-ingest batch publishing (NATS ADR-50, nats-server >= 2.14) for streams that allow it (``allow_batched``).

Each message is an ordinary publish (its own headers, ``Nats-Msg-Id`` included) whose reply subject carries the
batch's state: ``<inbox>.<batch id>.<flow>.<gap mode>.<batch seq>.<op>.$FI``. The server answers the first message
with a flow ack ``{"type":"ack","seq":0,"msgs":N}`` (send on; an ack comes every N messages), then a flow ack every
N messages, and the commit (op 2 on the last message) with a PubAck that carries ``batch`` and ``count``.

What a result here promises, read in nats-server's source (server/jetstream_batching.go and stream.go, main
branch at 2.15.0-dev) and checked against the installed 2.15.1 by ``tests/test_fast_ingest.py``: with gap mode
``fail``, a batch ends at its first rejected message, gap or lost
message, and its final PubAck's ``count`` says how many messages from the start are in the stream (stored now, or
dropped as duplicates of a copy it already had). Only that final PubAck confirms messages here: flow acks pace the
sending and nothing else. So a message is reported acknowledged only once the server has it; the caller
republishes the others one by one (the server drops copies it already has by ``Nats-Msg-Id``).

A fast batch reports no duplicates (the server drops them silently) and no per-message stream sequence: every
confirmed message gets the batch's final PubAck sequence (the stream sequence of the last message the batch
stored; 0 when every message was a duplicate).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeGuard

from nats.aio.client import Client

from ..message import Message
from .frames import CHUNK_BYTES, ID_HEADER_BYTES, command_head, is_plain
from .natscompat import send_publishes

__all__ = ["BatchOutcome", "FastBatch", "StreamModes", "publish_batch"]

#: The flow (messages per flow ack) this client asks for; the server caps it at 500 and lowers it while other
#: fast batches write to the same stream.
FLOW = 500
#: Flow acks that may be outstanding: sending stalls while ``seq > last acked seq + msgs * OUTSTANDING``.
OUTSTANDING = 2
#: The reply subject's operations: start (batch seq 1), append, and commit (store this message and end the batch).
#: Batch ids are message ids (36 characters; the server refuses more than 64, err_code 10207).
_OP_START, _OP_APPEND, _OP_COMMIT = 0, 1, 2
#: The err_code of a stream that does not allow batches (any more): its mode is read again.
BATCH_DISABLED = 10205


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """How a fast batch ended: ``confirmed`` messages from the start are in the stream (``stream``, ``sequence``:
    the final PubAck's); ``failure`` says why the others are not confirmed (None when all are)."""

    confirmed: int
    stream: str | None = None
    sequence: int = 0
    failure: str | None = None
    #: The stream answered that it does not allow batches (any more), or nothing answered at all (no stream): the
    #: caller should look the subject's stream up again.
    stale_mode: bool = False
    #: The server stopped answering: the outcome of the unconfirmed messages is unknown.
    timed_out: bool = False


class FastBatch:
    """The replies of one batch in flight, fed by the transport's reply subscription (:meth:`on_reply`)."""

    def __init__(self, batch_id: str, size: int) -> None:
        self.batch_id = batch_id
        self.size = size
        self.acked = 0  # highest batch sequence a flow ack named
        # Messages per flow ack the server asks for. Until its first answer, the flow this client asked for: the
        # server grants it unless other batches write to the stream, so at most FLOW * OUTSTANDING messages go
        # before the server's word (waiting for it instead cost a round trip per window, about a quarter of the
        # throughput here).
        self.msgs = FLOW
        self.stream: str | None = None
        self.sequence = 0
        self.count: int | None = None  # the final PubAck's count, once it came
        self.failure: str | None = None
        self.stale_mode = False
        self.timed_out = False
        self.changed = asyncio.Event()

    def allows(self, seq: int) -> bool:
        """Whether message ``seq`` may be sent now: at most OUTSTANDING flow acks ahead of the last one."""
        return seq <= self.acked + self.msgs * OUTSTANDING

    @property
    def done(self) -> bool:
        return self.count is not None or self.failure is not None

    def on_reply(self, data: bytes, headers: dict[str, str] | None) -> None:
        """Read one control message or PubAck; wakes the sender. Never raises: anything unreadable fails the batch."""
        self.changed.set()
        status = headers.get("Status") if headers else None
        if status is not None and not data:
            # No responders: no stream covers the subject, or its stream has no leader right now.
            self.fail(f"status {status}: no stream responded", stale=status == "503")
            return
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            self.fail(f"unreadable fast-ingest reply {bytes(data[:200])!r}")
            return
        kind = reply.get("type")
        if kind == "ack":
            seq, msgs = reply.get("seq"), reply.get("msgs")
            if _is_int(seq) and _is_int(msgs) and msgs > 0:
                self.acked, self.msgs = max(self.acked, seq), msgs
            return
        if kind == "gap":
            self.fail(f"the server saw a gap in the batch (expected {reply.get('last_seq')}, got {reply.get('seq')})")
            return
        error = reply.get("error")
        if isinstance(error, dict):  # {"type":"err",...} (newer servers) or a plain error reply
            code = error.get("err_code")
            self.fail(f"JetStream error {error.get('code')} ({code}): {error.get('description')}",
                       stale=code == BATCH_DISABLED)
            return
        count, stream, seq = reply.get("count"), reply.get("stream"), reply.get("seq")
        if _is_int(count) and isinstance(stream, str) and _is_int(seq):
            # The final PubAck. After a failure the server still commits what came before it: count says so.
            self.count = min(count, self.size)
            self.stream, self.sequence = stream, seq
            return
        self.fail(f"unexpected fast-ingest reply {bytes(data[:200])!r}")

    def fail(self, reason: str, *, stale: bool = False) -> None:
        """End the batch as failed (the first reason is kept); ``stale``: the stream mode should be read again."""
        if self.failure is None:
            self.failure = reason
        self.stale_mode = self.stale_mode or stale

    def outcome(self) -> BatchOutcome:
        confirmed = self.count or 0
        failure = self.failure
        if failure is None and confirmed < self.size:
            failure = f"the batch's PubAck confirmed {confirmed} of {self.size} messages"
        if confirmed >= self.size:
            return BatchOutcome(confirmed, self.stream, self.sequence)
        return BatchOutcome(confirmed, self.stream, self.sequence, failure, self.stale_mode, self.timed_out)


async def publish_batch(nc: Client, inbox: str, batch: FastBatch, messages: Sequence[Message], timeout: float,
                        on_sent: Callable[[int], None] | None = None) -> BatchOutcome:
    """Send ``messages`` (at least two) as one fast-ingest batch, committed with the last, and wait for its PubAck.

    ``batch`` must already be registered where the reply subscription on ``<inbox>.>`` finds it. Every wait for
    the server (its first answer, a flow ack while stalled, the PubAck) is bounded by ``timeout`` seconds without
    progress. Returns how many messages from the start the server confirmed; never raises for a server or
    connection failure (that is a failure in the outcome).

    The publishes are written here (:mod:`.frames`): every run the flow allows goes to nats-py in one piece (or a
    few, :data:`.frames.CHUNK_BYTES` each); a message that is not plain goes through nats-py's ``publish()``.
    """
    prefix = f"{inbox}.{batch.batch_id}.{FLOW}.fail."
    last = len(messages)
    frames: list[bytes] = []
    seq = 1  # the batch sequence of the next message to send (1-based)
    try:
        while seq <= last:
            if batch.done:
                break  # the server ended the batch (an error, a gap): what follows would be refused
            allowed = min(last, batch.acked + batch.msgs * OUTSTANDING)
            if seq > allowed:
                # Stall until the server catches up.
                if not await _progress(batch, partial(batch.allows, seq), timeout):
                    batch.timed_out = True
                    batch.fail(f"no flow ack within {timeout} s")
                    break
                continue
            # Build the run seq..allowed, up to a message nats-py must send or a full chunk.
            start = seq
            payload_bytes = chunk_bytes = 0
            while seq <= allowed and chunk_bytes < CHUNK_BYTES:
                message = messages[seq - 1]
                if not is_plain(message):
                    break
                op = _OP_APPEND if 1 < seq < last else _OP_START if seq == 1 else _OP_COMMIT
                payload = message.payload
                size = len(payload) + ID_HEADER_BYTES
                frames.append(command_head(message.subject, f"{prefix}{seq}.{op}.$FI", message.id, size))
                frames.append(payload)
                frames.append(b"\r\n")
                payload_bytes += len(payload)
                chunk_bytes += size
                seq += 1
            if seq > start:
                commands = b"".join(frames)
                frames.clear()
                await send_publishes(nc, commands, seq - start, payload_bytes)
                if on_sent is not None:
                    on_sent(seq - start)
                continue
            # Not plain: nats-py's own publish, its checks and exceptions.
            message = messages[seq - 1]
            op = _OP_START if seq == 1 else _OP_COMMIT if seq == last else _OP_APPEND
            await nc.publish(message.subject, message.payload, reply=f"{prefix}{seq}.{op}.$FI",
                             headers={**message.headers, "Nats-Msg-Id": message.id})
            if on_sent is not None:
                on_sent(1)
            seq += 1
        else:
            if not await _progress(batch, lambda: batch.done, timeout):
                batch.timed_out = True
                batch.fail(f"no PubAck for the batch within {timeout} s: outcome unknown")
    except Exception as exc:  # not connected any more, a bad header...: the rest goes one by one
        batch.fail(f"{type(exc).__name__}: {exc}")
    return batch.outcome()


async def _progress(batch: FastBatch, ready: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``ready()`` or the batch is done; False if no reply at all came for ``timeout`` seconds."""
    while not (ready() or batch.done):
        batch.changed.clear()
        try:
            await asyncio.wait_for(batch.changed.wait(), timeout)
        except asyncio.TimeoutError:
            return False
    return True


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class StreamModes:
    """Which stream each subject maps to and whether it allows fast-ingest batches, read with the raw JetStream API
    (nats-py 2.16's ``StreamConfig`` has no ``allow_batched``) and cached per subject for ``ttl`` seconds; a subject
    is read again at its next use after :meth:`forget` (a no-stream failure, a batch refused).

    Only a subject's first read is awaited (as the relay's first look at a subject's duplicate window is). Later
    reads run in the background while the known mode stays in use, so no publish waits on the API: a publish call
    takes at most about the transport's timeout, however the network misbehaves.

    A read that gets no answer (a timeout, no responders, a cluster without a leader, no permission for the API)
    keeps what was known before (nothing known: no batches) and is tried again after 1 s, then 2, 4... up to
    ``ttl``: an election must not turn batches off for a minute, and a client without API permissions must not
    ask at every window."""

    def __init__(self, api_prefix: str = "$JS.API", *, ttl: float = 60.0, timeout: float = 2.0) -> None:
        self.api_prefix = api_prefix
        self.ttl = ttl
        self.timeout = timeout
        # subject -> (read again after this time.monotonic(), batched stream or None, unanswered reads in a row)
        self._modes: dict[str, tuple[float, str | None, int]] = {}
        self._reading: dict[str, asyncio.Task[str | None]] = {}

    async def batched_stream(self, nc: Client, subject: str) -> str | None:
        """The stream ``subject`` maps to if it allows fast-ingest batches; None otherwise or when unknown."""
        known = self._modes.get(subject)
        if known is not None and time.monotonic() < known[0]:
            return known[1]
        reading = self._reading.get(subject)
        if reading is None:
            reading = self._reading[subject] = asyncio.ensure_future(self._refresh(nc, subject))
            reading.add_done_callback(lambda _task: self._reading.pop(subject, None))
        if known is not None:
            return known[1]  # what was known meanwhile
        return await asyncio.shield(reading)  # (a cancelled publish leaves the read to finish)

    def forget(self, subjects: Sequence[str] | set[str]) -> None:
        """Read these subjects' streams again at their next use."""
        for subject in subjects:
            known = self._modes.get(subject)
            if known is not None:
                self._modes[subject] = (0.0, known[1], known[2])

    async def wait_reads(self) -> None:
        """Wait for the reads under way (for tests and orderly shutdown)."""
        if self._reading:
            await asyncio.gather(*self._reading.values(), return_exceptions=True)

    def close(self) -> None:
        for task in list(self._reading.values()):
            task.cancel()
        self._reading.clear()

    async def _refresh(self, nc: Client, subject: str) -> str | None:
        answered, stream = await self._read(nc, subject)
        now = time.monotonic()
        if len(self._modes) > 10_000:  # bounded: subjects can be many
            self._modes.clear()
        if answered:
            self._modes[subject] = (now + self.ttl, stream, 0)
            return stream
        known = self._modes.get(subject)
        previous, unanswered = (known[1], known[2]) if known is not None else (None, 0)
        self._modes[subject] = (now + min(self.ttl, 2.0 ** unanswered), previous, unanswered + 1)
        return previous

    async def _read(self, nc: Client, subject: str) -> tuple[bool, str | None]:
        """(whether the server answered, the batched stream or None)."""
        names = await self._request(nc, f"{self.api_prefix}.STREAM.NAMES", {"subject": subject})
        if names is None:
            return False, None
        streams = names.get("streams")
        if not isinstance(streams, list) or len(streams) != 1 or not isinstance(streams[0], str):
            return True, None  # no stream (null or []), several, or a 4xx: no batches
        info = await self._request(nc, f"{self.api_prefix}.STREAM.INFO.{streams[0]}", None)
        if info is None:
            return False, None
        config = info.get("config")
        batched = isinstance(config, dict) and config.get("allow_batched") is True
        return True, streams[0] if batched else None

    async def _request(self, nc: Client, subject: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """The API's JSON answer (a 4xx error too: a definite answer); None when there is none worth keeping (no
        answer, or a 5xx such as a cluster without a leader: try again soon)."""
        try:
            reply = await nc.request(subject, json.dumps(body).encode() if body is not None else b"",
                                     timeout=self.timeout)
            answer = json.loads(reply.data)
        except Exception:  # a timeout, no responders, a disconnect: unknown, see the class docstring
            return None
        if not isinstance(answer, dict):
            return None
        error = answer.get("error")
        if isinstance(error, dict) and not (isinstance(error.get("code"), int) and error["code"] < 500):
            return None
        return answer
