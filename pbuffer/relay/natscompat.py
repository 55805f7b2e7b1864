"""The one place pbuffer reaches into nats-py's private state, for what nats-py has no API for.

nats-py keeps the protocol commands it has not written to the socket yet in ``Client._pending`` (a list of bytes)
and their total size in ``Client._pending_data_size``; after a disconnect it replays them once reconnected. The
relay must drop the publishes among them (see :func:`drop_unsent_publishes`). If a nats-py release renames either
attribute, :func:`check_client` raises at connect time and ``tests/test_natscompat.py`` fails, rather than the
ordering fix silently turning itself off. pyproject.toml bounds nats-py below the next major version for the same
reason.
"""

from __future__ import annotations

from nats.aio.client import Client

__all__ = ["check_client", "drop_unsent_publishes"]

_PRIVATE = ("_pending", "_pending_data_size")


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
