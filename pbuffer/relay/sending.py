""":func:`send`: save one message, then publish it (and whatever is older) through a relay, and say how it went."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from ..aio import AsyncBuffer
from ..buffer import Buffer
from ..errors import PublishError
from ..message import Message, Payload
from .drain import Relay, RelayObserver
from .transport import PublishResult, Transport

__all__ = ["send"]

_log = logging.getLogger("pbuffer.relay")


async def send(buffer: Buffer | AsyncBuffer, transport: Transport, payload: Payload, *, subject: str | None = None,
               headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> Message:
    """Save a message, then drain the buffer (this message and any older ones, oldest first) until the server has
    this one.

    The original design's ``send_message`` done right: the message is durable before anything is sent, sent with
    its id as ``Nats-Msg-Id``, and deleted only after the server acknowledged it. Returns the saved message once
    the server has it (and it is deleted from the buffer), even while older messages of a subject no stream
    covers still wait; raises :class:`~pbuffer.PublishError` if it was dead-lettered, or if no acknowledgement came
    within ``timeout`` seconds (it then stays safely in the buffer for the next drain).
    """
    facade = buffer if isinstance(buffer, AsyncBuffer) else AsyncBuffer(buffer)
    try:
        message = await facade.save(payload, subject=subject, headers=headers)
        relay = Relay(facade, transport, close_transport=False)
        outcome = _Outcome(message.id)
        relay.add_observer(outcome)
        running = asyncio.ensure_future(relay.run())
        waiting = asyncio.ensure_future(outcome.settled.wait())
        try:
            await asyncio.wait({running, waiting}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            if outcome.settled.is_set():
                relay.stop()  # the window under way finishes, its deletes included
            else:
                running.cancel()  # (the relay gives its claims back)
            await asyncio.wait({running})
    finally:
        if facade is not buffer:
            await facade.close(close_buffer=False)  # the caller's Buffer stays open
    failed = None if running.cancelled() else running.exception()
    if outcome.dead_reason is not None:
        raise PublishError(f"message {message.id} was dead-lettered: {outcome.dead_reason}")
    if not outcome.settled.is_set():
        if failed is not None:
            raise failed
        raise PublishError(f"message {message.id} was saved but not acknowledged within {timeout} s; it stays in "
                           "the buffer and goes with the next drain")
    if failed is not None:  # the server has the message: a resend would store it twice, under a new id
        _log.warning("message %s was published; the relay failed after it: %r", message.id, failed)
    return message


class _Outcome(RelayObserver):
    """What became of one message, as the relay sending it saw it."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.dead_reason: str | None = None
        self.settled = asyncio.Event()

    def window_published(self, messages: Sequence[Message], results: Sequence[PublishResult],
                         seconds: float) -> None:
        for message, result in zip(messages, results, strict=False):
            if message.id == self.message_id and result.acknowledged:
                self.settled.set()

    def dead_lettered(self, message_id: str, reason: str) -> None:
        if message_id == self.message_id:
            self.dead_reason = reason
            self.settled.set()
