"""What the outbox tests share: buffers and application engines on one database, a relay running in a thread into
a real nats-server, and a reader for the stream."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from nats_support import connect, read_stream_ids

import pbuffer
from pbuffer import Buffer
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay

#: Guards waits for progress: a hang fails the test instead of stalling the run (not a speed assertion).
HANG_GUARD = 120.0


def open_buffer(url: str, **options: Any) -> Buffer:
    """A buffer the outbox can share: sqlite without one-writer mode (the outbox refuses that mode)."""
    if url.startswith("sqlite"):
        options.setdefault("serialize_writes", False)
    return pbuffer.open(url, **options)


def caller_engine(url: str, **options: Any) -> sa.Engine:
    """The application's own engine on the buffer's database (its own pool of connections: a new MariaDB
    connection costs about half a second on this machine)."""
    if url.startswith("mysql"):
        # As pbuffer's own: REPEATABLE READ's gap locks would make limits' reads block other writers.
        options.setdefault("isolation_level", "READ COMMITTED")
    if not url.startswith("sqlite"):
        options.setdefault("pool_size", 10)
    return sa.create_engine(url, **options)


class RelayThread:
    """``Relay.run()`` into ``server`` in a thread of its own, until :meth:`stop`."""

    def __init__(self, buffer: Buffer, server: NatsServer, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._relay: Relay | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

        async def run() -> None:
            self._relay = Relay(buffer, await connect(server), **options)
            self._ready.set()
            try:
                await self._relay.run()
            finally:
                await self._relay.close()

        def main() -> None:
            try:
                self._loop.run_until_complete(run())
            except BaseException as exc:  # reported by stop()
                self.error = exc
            finally:
                self._ready.set()

        self._thread = threading.Thread(target=main, name="relay")
        self._thread.start()
        self._ready.wait(HANG_GUARD)

    def stop(self) -> None:
        if self._relay is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._relay.stop)
        self._thread.join(HANG_GUARD)
        self._loop.close()
        if self.error is not None:
            raise self.error


def stream_ids(server: NatsServer, stream: str) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in ``stream``, in stream order."""

    async def read() -> list[str]:
        transport = await connect(server)
        try:
            return await read_stream_ids(transport, stream)
        finally:
            await transport.close()

    return asyncio.run(read())


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {HANG_GUARD} s waiting for {what}")
        time.sleep(0.05)


class HeldSave:
    """A thread that saves one message through an outbox transaction of its own and keeps that transaction open
    until :meth:`commit`: what other savers and relays must never wait for. ``message``: the saved message."""

    def __init__(self, buf: Buffer, engine: sa.Engine, subject: str) -> None:
        self.message: pbuffer.Message | None = None
        self.error: BaseException | None = None
        self._held, self._release = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._hold, args=(buf, engine, subject))

    def _hold(self, buf: Buffer, engine: sa.Engine, subject: str) -> None:
        try:
            with engine.connect() as conn:
                self.message = buf.save(b"held", subject=subject, connection=conn)
                self._held.set()
                self._release.wait(HANG_GUARD)
                conn.commit()
        except BaseException as exc:  # reported by the test's thread
            self.error = exc
            self._held.set()

    def start(self) -> None:
        """Start, and return once the message is saved in the open transaction."""
        self._thread.start()
        assert self._held.wait(HANG_GUARD) and self.error is None, self.error

    def is_open(self) -> bool:
        return self._thread.is_alive()

    def commit(self) -> pbuffer.Message:
        """Commit the held transaction; returns its message."""
        self._release.set()
        self._thread.join(HANG_GUARD)
        assert self.error is None and self.message is not None, self.error
        return self.message

    def end(self) -> None:
        """In a test's ``finally``: let the thread end whatever happened."""
        self._release.set()
        if self._thread.ident is not None:  # started
            self._thread.join(HANG_GUARD)
