"""The JetStream transport over nats-py: pipelined publishes, every ack awaited with a timeout, and nats-py's
exceptions mapped once, here, into transient or permanent failures."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from .errors import PublishError
from .message import Message
from .transport import PublishResult, Transport

__all__ = ["JetStreamTransport", "classify"]

_log = logging.getLogger("pbuffer.jetstream")

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
_PERMANENT = (nats.errors.MaxPayloadError, nats.errors.BadSubjectError, nats.errors.BadHeaderError)


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
                                    transient=True)
    if isinstance(exc, _TRANSIENT):
        return PublishResult.failed(f"{type(exc).__name__}: {exc}", transient=True)
    if isinstance(exc, nats.js.errors.APIError):
        # A 400 is the stream refusing this message (a rule it breaks); anything else may pass on retry.
        transient = exc.code != 400
        return PublishResult.failed(f"JetStream error {exc.code} ({exc.err_code}): {exc.description}",
                                    transient=transient)
    # Unknown failures are retried: dropping a message on a guess would break the one promise that matters.
    return PublishResult.failed(f"{type(exc).__name__}: {exc}", transient=True)


class JetStreamTransport(Transport):
    """Publishes to JetStream through a nats-py connection.

    Build it with :meth:`connect` (pbuffer owns the connection) or from an existing ``nats.aio.client.Client``
    (the caller owns it). Each ``publish`` sends the whole batch with ``publish_async`` (many in flight) and waits
    for every ack at most ``timeout`` seconds; a missing ack is a transient failure whose outcome is unknown.
    """

    def __init__(self, nc: Client, *, timeout: float = 5.0, owns_connection: bool = False) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=timeout, publish_async_max_pending=1_000_000)
        self.timeout = timeout
        self._owns_connection = owns_connection
        #: Publishes of the windows being awaited (sent, their window not settled yet).
        self.in_flight = 0

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
    ) -> JetStreamTransport:
        """Connect to NATS: ``connect_attempts`` tries per server (at least 2), then
        :class:`~pbuffer.PublishError`; refused credentials or an untrusted certificate fail at once. Once
        connected it never stops reconnecting by default (``max_reconnect_attempts=-1``): a relay outlives
        outages, and its messages wait in the buffer meanwhile.

        Credentials are passed to nats-py as given and never logged.
        """
        holder: list[Client] = []

        async def on_disconnected() -> None:
            # nats-py replays publishes it still held when the connection dropped once it reconnects. Such a
            # stale copy of a later message could be stored before the earlier ones the relay republishes from
            # the buffer, reordering the stream: drop them; the relay republishes them itself, in order.
            if holder:
                _drop_unsent_publishes(holder[0])
            await _on_disconnected()

        first_errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            # nats-py retries every failure of the first connect: a refusal no retry can fix (wrong credentials,
            # an untrusted certificate) is raised out of its loop instead, and after a failed TLS upgrade nats-py
            # would hang in its own close (nats.py issue #718).
            if not holder:
                reason = _refusal(exc)
                if reason is not None:
                    raise _Refused(reason) from exc
                first_errors[:] = [exc]
            await _on_error(exc)

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
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": _on_reconnected,
            "allow_reconnect": True,
        }
        for key, value in (("user_credentials", creds), ("user", user), ("password", password),
                           ("token", token), ("nkeys_seed", nkeys_seed), ("tls", tls),
                           ("tls_hostname", tls_hostname)):
            if value is not None:
                options[key] = value
        nc = Client()
        where = _safe_servers(options["servers"])
        try:
            await nc.connect(**options)
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
        return cls(nc, timeout=timeout, owns_connection=True)

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        if not self.nc.is_connected:
            # Nothing is queued while disconnected (see connect): the whole window waits in the buffer.
            return [PublishResult.failed("not connected to NATS", transient=True) for _ in messages]
        pending: list[asyncio.Future[Any] | PublishResult] = []
        publish_async = self.js.publish_async
        sent = 0
        for message in messages:
            try:
                # No wait_stall: with one, nats-py wraps every publish in asyncio.wait_for, which yields to the
                # loop each time and turns a pipelined window into a trickle. The window size bounds the
                # pending publishes instead (publish_async_max_pending is set far above it).
                future = await publish_async(message.subject, message.payload,
                                             headers={**message.headers, "Nats-Msg-Id": message.id})
            except Exception as exc:  # not connected any more, max_payload...: this message only
                pending.append(classify(exc, message))
            else:
                sent += 1
                self.in_flight += 1
                pending.append(future)
        futures = [f for f in pending if isinstance(f, asyncio.Future)]
        try:
            if futures:
                # nats-py's futures have no timeout of their own, and a server error can leave one unresolved
                # (nats.py issue #985): wait a bounded time, then give the rest up as "unknown".
                _done, late = await asyncio.wait(futures, timeout=self.timeout)
                for future in late:
                    future.cancel()  # frees nats-py's slot; the message is retried with the same id
        finally:
            self.in_flight -= sent
        results = []
        for message, item in zip(messages, pending, strict=True):
            if isinstance(item, PublishResult):
                results.append(item)
            elif item.cancelled():
                results.append(classify(asyncio.TimeoutError(), message))
            elif item.exception() is not None:
                results.append(classify(item.exception(), message))  # type: ignore[arg-type]
            else:
                ack = item.result()
                results.append(PublishResult.duplicate(ack.stream, ack.seq) if ack.duplicate
                               else PublishResult.stored(ack.stream, ack.seq))
        return results

    async def duplicate_window(self, subject: str) -> float | None:
        try:
            stream = await self.js.find_stream_name_by_subject(subject)
            info = await self.js.stream_info(stream)
        except Exception:  # unknown is an answer: the relay only warns with it
            return None
        window = info.config.duplicate_window
        return float(window) if window is not None else None

    async def close(self) -> None:
        if self._owns_connection and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), self.timeout)
            except Exception:
                await self.nc.close()


def _drop_unsent_publishes(nc: Client) -> None:
    """Forget PUB/HPUB commands nats-py buffered but never wrote (private state: nats-py has no API for it)."""
    pending = getattr(nc, "_pending", None)
    if pending:
        kept = [cmd for cmd in pending if not bytes(cmd[:5]).startswith((b"PUB ", b"HPUB "))]
        nc._pending = kept
        nc._pending_data_size = sum(len(cmd) for cmd in kept)


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


def _safe_servers(servers: Sequence[str]) -> str:
    """Server URLs without any user:password part."""
    shown = []
    for server in servers:
        scheme, sep, rest = server.partition("://")
        shown.append(f"{scheme}{sep}{rest.rpartition('@')[2]}" if sep else server.rpartition("@")[2])
    return ", ".join(shown)


async def _on_error(exc: Exception) -> None:
    _log.warning("NATS connection error: %s: %s", type(exc).__name__, exc)


async def _on_disconnected() -> None:
    # Also called when we close the connection ourselves; hence INFO, and the reconnect logs come from nats-py.
    _log.info("disconnected from NATS at %s; publishes wait for the reconnect", time.strftime("%H:%M:%S"))


async def _on_reconnected() -> None:
    _log.info("reconnected to NATS")
