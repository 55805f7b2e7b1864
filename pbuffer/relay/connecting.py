"""Opening the nats-py connection a JetStream transport publishes through: a refusal no retry can fix (credentials,
TLS) raised at once as :class:`~pbuffer.PublishError`, stale replays dropped on a disconnect, connection errors
logged without a flood, and no password in any message. Also closing it (even while the server is down), and the
warning for a caller's own connection that would replay publishes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client

from ..errors import PublishError
from .natscompat import discard_pending, drop_unsent_publishes

__all__ = ["close_client", "open_client", "safe_servers", "warn_if_replaying"]

_log = logging.getLogger("pbuffer.jetstream")


async def open_client(options: dict[str, Any], max_reconnect_attempts: int) -> Client:
    """A connected nats-py client, or :class:`~pbuffer.PublishError` saying why not."""
    holder: list[Client] = []

    async def on_disconnected() -> None:
        # nats-py replays publishes it still held when the connection dropped once it reconnects. Such a
        # stale copy of a later message could be stored before the earlier ones the relay republishes from
        # the buffer, reordering the stream: drop them; the relay republishes them itself, in order.
        if holder:
            drop_unsent_publishes(holder[0])
        await _on_disconnected()

    first_errors: list[Exception] = []
    log_error = _ErrorLog()

    async def on_error(exc: Exception) -> None:
        # nats-py retries every failure of the first connect: a refusal no retry can fix (wrong credentials,
        # an untrusted certificate) is raised out of its loop instead, and after a failed TLS upgrade nats-py
        # would hang in its own close (nats.py issue #718).
        if not holder:
            reason = _refusal(exc)
            if reason is not None:
                raise _Refused(reason) from exc
            first_errors[:] = [exc]
        await log_error(exc)

    nc = Client()
    where = safe_servers(options["servers"])
    try:
        await nc.connect(**options, error_cb=on_error, disconnected_cb=on_disconnected,
                         reconnected_cb=_on_reconnected)
    except _Refused as exc:
        await _abandon(nc)
        raise PublishError(f"cannot connect to NATS at {where}: {exc}") from exc.__cause__
    except Exception as exc:  # nats-py raises several types (NoServersError, OSError, auth errors...)
        last = first_errors[-1] if first_errors else None
        detail = f" (last error: {type(last).__name__}: {last})" if last is not None and last is not exc else ""
        await _abandon(nc)
        raise PublishError(f"cannot connect to NATS at {where}: {type(exc).__name__}: {exc}{detail}") from exc
    nc.options["max_reconnect_attempts"] = max_reconnect_attempts
    holder.append(nc)
    return nc


async def close_client(nc: Client, timeout: float) -> None:
    """Close a connection pbuffer opened: drained (what it holds written, replies awaited) within ``timeout``,
    else closed. Never raises: when the server is down, nats-py's ``close()`` would try to flush what it holds into
    the dead socket, raise ``ConnectionResetError`` halfway and leave its subscriptions' tasks running."""
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception:
        if not nc.is_connected:  # nothing can be written
            discard_pending(nc)
        try:
            await nc.close()
        except Exception as exc:
            _log.debug("closing the NATS connection: %r", exc)


def warn_if_replaying(nc: Client) -> None:
    """A client of the caller's own that buffers publishes while disconnected (nats.connect's ``pending_size``,
    2 MiB by default) replays them once it reconnects, ahead of older messages the relay publishes again from the
    buffer: say so. pbuffer cannot change the caller's client (its other publishes rely on its settings)."""
    if nc._max_pending_size > 0:
        _log.warning("JetStreamTransport on a NATS connection it did not open: nats-py holds up to %d bytes of "
                     "publishes made while disconnected and sends them once it reconnects, which can store a "
                     "message ahead of an older one of its subject; JetStreamTransport.connect() opens one that "
                     "holds nothing back and drops what it held at a disconnect", nc._max_pending_size)


class _Refused(Exception):
    """A first connect that the server or TLS refused: retrying cannot help. Its text is the reason."""


def _refusal(exc: BaseException) -> str | None:
    """Why a connect attempt was refused for good, or None for a failure worth retrying (server down...)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    text = str(exc).lower()
    if isinstance(exc, nats.errors.AuthorizationError) or (
            isinstance(exc, nats.errors.Error)
            and any(word in text for word in ("authorization violation", "authentication expired",
                                              "authentication revoked"))):
        return f"the server refused the credentials ({exc})"
    return None


async def _abandon(nc: Client) -> None:
    """Close a client whose first connect failed: bounded, as nats-py's close can hang after a failed TLS upgrade."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 1.0)


def safe_servers(servers: Sequence[str]) -> str:
    """Server URLs without any user:password part."""
    shown = []
    for server in servers:
        scheme, sep, rest = server.partition("://")
        shown.append(f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else server.rpartition("@")[2])
    return ", ".join(shown)


class _ErrorLog:
    """One WARNING per cause a minute, for one connection: nats-py reports every failed reconnect (an
    "Authorization Violation" a try while a password is wrong); the repeats go to DEBUG."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    async def __call__(self, exc: Exception) -> None:
        cause = f"{type(exc).__name__}: {exc}"
        now = time.monotonic()
        if now - self._last.get(cause, -1e9) < 60:
            _log.debug("NATS connection error: %s", cause)
            return
        if len(self._last) > 100:  # causes can carry varying text: keep the memory bounded
            self._last.clear()
        self._last[cause] = now
        _log.warning("NATS connection error: %s (logged again at most once a minute)", cause)


async def _on_disconnected() -> None:
    # Also called when we close the connection ourselves; hence INFO, and the reconnect logs come from nats-py.
    _log.info("disconnected from NATS at %s; publishes wait for the reconnect", time.strftime("%H:%M:%S"))


async def _on_reconnected() -> None:
    _log.info("reconnected to NATS")
