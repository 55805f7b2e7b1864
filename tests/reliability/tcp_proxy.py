"""A small TCP proxy on loopback for network-fault tests: it sits between a client and a server and can reset every
connection, blackhole them (keep them open but forward nothing), and add latency.

It runs its own event loop in a thread, so a busy or blocked test loop cannot stall the network it simulates, and
the controls are plain thread-safe methods:

    with TcpProxy(server_port) as proxy:        # clients connect to proxy.port
        proxy.reset_all()                        # RST to both ends of every connection
        proxy.set_blackhole(True)                # nothing forwarded, connections kept, new ones accepted
        proxy.set_latency(0.3)                   # each chunk delivered 0.3 s after it was read, in order

A blackhole stops *reading* as well as writing, as a network that drops packets does: what the ends send piles up
in their socket buffers (back-pressure, as with TCP retransmitting into a dead path) and is delivered, in order, if
the blackhole lifts while the connection is still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_CHUNK = 65536


class _Link:
    """One proxied connection: the client's socket, the server's, and a pump each way."""

    def __init__(self, proxy: TcpProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client = client
        self.server: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        try:
            self.server = await asyncio.open_connection(self.proxy.target_host, self.proxy.target_port)
        except OSError:
            self.close(reset=True)  # the server is down: the client sees its connection refused-like reset
            return
        self.tasks = [asyncio.ensure_future(self._pump(self.client[0], self.server[1])),
                      asyncio.ensure_future(self._pump(self.server[0], self.client[1]))]
        await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        self.close(reset=False)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks, stamp each with the time it may be delivered, and write them in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.ensure_future(self._deliver(queue, writer))
        try:
            while True:
                await self.proxy._open.wait()  # blackholed: leave the bytes in the sender's socket
                data = await reader.read(_CHUNK)
                if not data:
                    break
                queue.put_nowait((time.monotonic() + self.proxy.latency, data))
            queue.put_nowait((0.0, b""))  # end of stream, after whatever is still queued
            await deliver
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            deliver.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            await self.proxy._open.wait()  # a chunk read just before the blackhole began is held too
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                # One end is gone (reset or closed): so is the connection, both ways, as on a real network.
                self.close(reset=True)
                return

    def close(self, *, reset: bool) -> None:
        for task in self.tasks:
            task.cancel()
        for pair in (self.client, self.server):
            if pair is None:
                continue
            writer = pair[1]
            if reset:
                # SO_LINGER with a zero timeout makes close() send an RST instead of a FIN: a reset connection.
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        self.proxy._links.discard(self)


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``target_host:target_port``, with faults on demand."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = port
        self.latency = 0.0
        self.accepted = 0
        self.resets = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._open = asyncio.Event()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    def start(self) -> TcpProxy:
        self._thread.start()

        async def listen() -> int:
            self._open.set()
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            port: int = self._server.sockets[0].getsockname()[1]
            return port

        self.port = self._call(listen())
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(self, (reader, writer))
        self._links.add(link)
        await link.run()

    def reset_all(self) -> int:
        """Reset (RST) both ends of every open connection; returns how many. New connections are still accepted."""
        async def reset() -> int:
            links = list(self._links)
            for link in links:
                link.close(reset=True)
            self.resets += len(links)
            return len(links)

        return self._call(reset())

    def set_blackhole(self, on: bool) -> None:
        """While on, connections are accepted and kept, but no byte is forwarded either way."""
        async def switch() -> None:
            if on:
                self._open.clear()
            else:
                self._open.set()

        self._call(switch())

    def set_latency(self, seconds: float) -> None:
        """Each chunk read from now on is delivered ``seconds`` later (each way), order kept."""
        async def switch() -> None:
            self.latency = seconds

        self._call(switch())

    @property
    def connections(self) -> int:
        return len(self._links)

    def close(self) -> None:
        async def shut() -> None:
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.close(reset=True)
            self._open.set()  # lets any pump still waiting finish
            # Let every connection's task end before the loop stops, so none is destroyed while pending.
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(shut())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
