"""The one place pbuffer reaches into nats-py's private state, for what nats-py has no API for.

nats-py keeps the protocol commands it has not written to the socket yet in ``Client._pending`` (a list of bytes)
and their total size in ``Client._pending_data_size``; after a disconnect it replays them once reconnected. The
relay must drop the publishes among them (see :func:`drop_unsent_publishes`). The relay also writes its own publish
commands, many in one piece (:mod:`.frames`), and queues them where nats-py queues its own, with the checks
nats-py's ``publish()`` makes first (:func:`send_publishes`: ``_send_command``, ``_flush_pending``,
``_flush_queue``, ``_max_pending_size``). If a nats-py release renames any of these, :func:`check_client` raises at
connect time and ``tests/test_natscompat.py`` fails, rather than the ordering fix silently turning itself off.
pyproject.toml bounds nats-py below the next major version for the same reason.
"""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client

__all__ = ["check_client", "drop_unsent_publishes", "send_publishes"]

_PRIVATE = ("_pending", "_pending_data_size", "_send_command", "_flush_pending", "_flush_queue", "_max_pending_size")


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
