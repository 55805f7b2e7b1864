"""What the server's replies and nats-py's exceptions mean for a publish: the one place each is read, as a
:class:`~pbuffer.relay.transport.PublishResult` (stored, duplicate, or a transient or permanent failure)."""

from __future__ import annotations

import asyncio
import json
import re

import nats
import nats.errors
import nats.js.errors

from ..message import Message
from .transport import FailureKind, PublishResult

__all__ = ["Acks", "classify", "parse_reply"]

_TRANSIENT = (
    asyncio.TimeoutError,  # nats.errors.TimeoutError derives from it
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.FlushTimeoutError,
    nats.js.errors.TooManyStalledMsgsError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)
_DISCONNECTED = (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
                 nats.errors.ConnectionDrainingError, nats.errors.OutboundBufferLimitError,
                 nats.errors.StaleConnectionError)
_UNAVAILABLE = (nats.js.errors.ServiceUnavailableError, nats.js.errors.ServerError)
_PERMANENT = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError, nats.errors.BadHeaderError)


def _kind_of_code(code: object) -> FailureKind:
    """A 5xx code or status from the server means it or the stream is unavailable for now."""
    return "unavailable" if str(code).startswith("5") else "other"


def classify(exc: BaseException, message: Message) -> PublishResult:
    """The result for a publish that raised ``exc``: the one place nats-py's errors are interpreted."""
    if isinstance(exc, (nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)):
        # The same answer comes from a stream that exists but has no leader for a moment (a cluster election).
        return PublishResult.failed(f"no stream responded for subject {message.subject!r} (none covers it, or its "
                                    "stream has no leader right now)", transient=True, no_stream=True)
    if isinstance(exc, _PERMANENT):
        return PublishResult.failed(f"{type(exc).__name__}: {exc} ({len(message.payload)} bytes)", transient=False)
    if isinstance(exc, asyncio.TimeoutError):
        return PublishResult.failed("no ack before the timeout: outcome unknown, retried with the same id",
                                    transient=True, kind="timeout")
    if isinstance(exc, _TRANSIENT):
        kind: FailureKind = ("disconnected" if isinstance(exc, _DISCONNECTED) else
                             "unavailable" if isinstance(exc, _UNAVAILABLE) else "other")
        return PublishResult.failed(f"{type(exc).__name__}: {exc}", transient=True, kind=kind)
    if isinstance(exc, nats.js.errors.APIError):
        # A 400 is the stream refusing this message (a rule it breaks); anything else may pass on retry.
        transient = exc.code != 400
        return PublishResult.failed(f"JetStream error {exc.code} ({exc.err_code}): {exc.description}",
                                    transient=transient, kind=_kind_of_code(exc.code))
    # Unknown failures are retried: dropping a message on a guess would break the one promise that matters.
    return PublishResult.failed(f"{type(exc).__name__}: {exc}", transient=True)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: The usual PubAck, read without the json module (a third of the reply's cost); anything else takes the full path.
_PLAIN_ACK = re.compile(rb'\{"stream":"([^"\\]+)",\s*"seq":(\d+)\}')


def parse_reply(data: bytes, headers: dict[str, str] | None) -> PublishResult:
    """A publish's reply as a result: the one place the server's answers are read."""
    plain = _PLAIN_ACK.fullmatch(data) if not headers else None
    if plain is not None:
        return PublishResult.stored(plain[1].decode(), int(plain[2]))
    status = headers.get("Status") if headers else None
    if status is not None and not data:
        if status == "503":  # no responders: no stream covers the subject, or its stream has no leader
            return PublishResult.failed("no stream responded", transient=True, no_stream=True)
        return PublishResult.failed(f"status {status} {headers.get('Description', '') if headers else ''}".strip(),
                                    transient=True, kind=_kind_of_code(status))
    try:
        ack = json.loads(data)
    except ValueError:
        ack = None
    if isinstance(ack, dict):
        error = ack.get("error")
        # JetStream's errors have an integer code, and an integer err_code or the stream's name (nats-server 2.x
        # sends both, with seq 0). Any other "error" is a service's own answer, never a PubAck: retrying it would
        # make that service act again.
        if error is not None:
            if isinstance(error, dict) and _is_int(error.get("code")) and (
                    _is_int(error.get("err_code")) or isinstance(ack.get("stream"), str)):
                code = error["code"]
                # A 400 is the stream refusing this message (a rule it breaks); anything else may pass on retry.
                return PublishResult.failed(f"JetStream error {code} ({error.get('err_code')}): "
                                            f"{error.get('description')}", transient=code != 400,
                                            kind=_kind_of_code(code))
            return PublishResult.failed(f"the reply is not a JetStream PubAck: {bytes(data[:200])!r}",
                                        transient=False)
        stream, seq = ack.get("stream"), ack.get("seq")
        if isinstance(stream, str) and isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
            return PublishResult.duplicate(stream, seq) if ack.get("duplicate") else PublishResult.stored(stream, seq)
    # Something answered that is not a stream (a service on that subject, a $-subject API...): retrying would
    # only make it act again.
    return PublishResult.failed(f"the reply is not a JetStream PubAck: {bytes(data[:200])!r}", transient=False)


class Acks:
    """The replies one publish call awaits: message ``i`` of the call has token ``base + i``. ``done`` is set once
    every message sent has its result (``remaining`` is 0 after the last send), or by :meth:`expire`."""

    __slots__ = ("base", "done", "end", "remaining", "results", "sending", "sent")

    def __init__(self, base: int, size: int, done: asyncio.Future[None]) -> None:
        self.base = base
        self.end = base + size
        self.results: list[PublishResult | None] = [None] * size
        self.sent = 0  # messages handed to nats-py (or being handed)
        self.remaining = 0  # of those, the ones without a result yet
        self.sending = True
        self.done = done

    def sending_more(self, count: int) -> None:
        self.sent += count
        self.remaining += count

    def reply(self, index: int, result: PublishResult) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.remaining -= 1
            if self.remaining == 0 and not self.sending and not self.done.done():
                self.done.set_result(None)

    def expire(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
