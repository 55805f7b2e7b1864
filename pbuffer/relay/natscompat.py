"""The one place pbuffer reaches into nats-py's private state, for what nats-py has no API for.

nats-py keeps the protocol commands it has not written to the socket yet in ``Client._pending`` (a list of bytes)
and their total size in ``Client._pending_data_size``; after a disconnect it replays them once reconnected. The
relay must drop the publishes among them (see :func:`drop_unsent_publishes`). The relay also writes its own publish
commands, many in one piece (:mod:`.frames`), and queues them where nats-py queues its own, with the checks
nats-py's ``publish()`` makes first (:func:`send_publishes`: ``_send_command``, ``_flush_pending``,
``_flush_queue``, ``_max_pending_size``). And it reads its acks as nats-py's reader parses them, not through a
subscription's queue and task (:func:`deliver_inline`: ``_process_msg``, ``_process_headers``, a subscription's
``_id``). If a nats-py release renames any of these, :func:`check_client` raises at connect time and
``tests/test_natscompat.py`` fails, rather than the ordering fix silently turning itself off or acks going unread.
pyproject.toml bounds nats-py below the next major version for the same reason.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client

__all__ = ["InlineHandler", "check_client", "deliver_inline", "discard_pending", "drop_unsent_publishes",
           "send_publishes", "stop_inline"]

_PRIVATE = ("_pending", "_pending_data_size", "_send_command", "_flush_pending", "_flush_queue", "_max_pending_size",
            "_process_msg", "_process_headers")

_log = logging.getLogger("pbuffer.jetstream")

#: ``handler(subject, data, headers)``: a message's subject (bytes), payload, and headers as nats-py reads them
#: (``None`` when it has none). Called in nats-py's reader: must be quick, never block, never raise.
InlineHandler = Callable[[bytes, bytes, "dict[str, str] | None"], None]
# Per client: the handlers by subscription id, read by the client's wrapped _process_msg.
_inline: weakref.WeakKeyDictionary[Client, dict[int, InlineHandler]] = weakref.WeakKeyDictionary()


def check_client(nc: Client) -> None:
    """Raise if ``nc`` lacks the private state :func:`drop_unsent_publishes` relies on."""
    missing = [name for name in _PRIVATE if not hasattr(nc, name)]
    if missing:
        import nats

        raise RuntimeError(f"nats-py {getattr(nats, '__version__', '?')} has no {', '.join(missing)}: pbuffer "
                           "cannot drop publishes held across a disconnect; use a nats-py version pbuffer supports")


def drop_unsent_publishes(nc: Client) -> None:
    """Forget PUB/HPUB commands nats-py buffered but never wrote, keeping every other command (SUB, PING...).

    Called when the connection drops: nats-py would replay them after reconnecting, and a stale copy of a later
    message stored before the earlier ones the relay republishes from the buffer would reorder the stream.
    """
    pending: list[bytes] = nc._pending
    if pending:
        kept = [cmd for cmd in pending if not bytes(cmd[:5]).startswith((b"PUB ", b"HPUB "))]
        nc._pending = kept
        nc._pending_data_size = sum(len(cmd) for cmd in kept)


def discard_pending(nc: Client) -> None:
    """Forget every command nats-py holds to write. For closing a connection that is down: nats-py's ``close()``
    would try to flush them into the dead socket, raise (``ConnectionResetError``) halfway, and leave its
    subscriptions' tasks running."""
    nc._pending = []
    nc._pending_data_size = 0


async def send_publishes(nc: Client, commands: bytes, count: int, payload_bytes: int) -> None:
    """Queue ``commands`` (``count`` whole PUB/HPUB commands carrying ``payload_bytes`` bytes of payload) to be
    written as nats-py writes a publish: first the refusals of ``Client.publish()`` (closed, draining,
    disconnected without room to hold them), then the pending list and a kick of its flusher (``_send_publish``).
    Nothing is queued when this raises."""
    if nc.is_closed:
        raise nats.errors.ConnectionClosedError
    if nc.is_draining_pubs:
        raise nats.errors.ConnectionDrainingError
    if not nc.is_connected and (nc._max_pending_size <= 0
                                or len(commands) + nc._pending_data_size > nc._max_pending_size):
        raise nats.errors.OutboundBufferLimitError
    nc.stats["out_msgs"] += count
    nc.stats["out_bytes"] += payload_bytes
    await nc._send_command(commands)
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()


def deliver_inline(nc: Client, subscription: Any, handler: InlineHandler) -> None:
    """Hand every message of ``subscription`` (one of ``nc``'s) to ``handler`` as nats-py's reader parses it,
    instead of building a ``Msg`` for the subscription's queue and task to hand to its callback: 2.3 us of a relay's
    4.1 us of client CPU per ack (measured). Other subscriptions are untouched. After a reconnect nats-py subscribes
    again under the same id, so the handler keeps its messages; :func:`stop_inline` ends it."""
    sid = getattr(subscription, "_id", None)
    if not isinstance(sid, int):
        import nats

        raise RuntimeError(f"nats-py {getattr(nats, '__version__', '?')}: a subscription has no integer _id; pbuffer "
                           "cannot read its replies; use a nats-py version pbuffer supports")
    handlers = _inline.get(nc)
    if handlers is None:
        handlers = _inline[nc] = {}
        process_msg = nc._process_msg
        process_headers = nc._process_headers
        stats = nc.stats
        found = handlers.get

        async def inline_process_msg(sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
            handler = found(sid)
            if handler is None:
                await process_msg(sid, subject, reply, data, headers)
                return
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(data)
            try:
                handler(subject, data, await process_headers(headers) if headers else None)
            except Exception:  # never into nats-py's reader: a lost reply is a timeout, and a retry
                _log.exception("reading a reply on %r failed", subject)

        nc._process_msg = inline_process_msg  # type: ignore[method-assign]
    handlers[sid] = handler


def stop_inline(nc: Client, subscription: Any) -> None:
    """Deliver ``subscription``'s messages the usual way again (:func:`deliver_inline`)."""
    handlers = _inline.get(nc)
    if handlers is not None:
        handlers.pop(subscription._id, None)
