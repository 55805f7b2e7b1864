"""Getting messages to JetStream: ``pbuffer drain`` (a relay, once or following) and ``pbuffer send`` (one message)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import pbuffer

from ..message import Message
from ..validation import check_headers, check_subject
from .common import (
    EXIT_PENDING,
    JSON,
    SERVERS,
    URL,
    buffer_url,
    connect,
    connection_options,
    connection_settings,
    console,
    emit_json,
    err_console,
    friendly,
)
from .terminal import escape

# ------------------------------------------------------------------------------------------------------ drain

@click.command()
@URL
@SERVERS
@connection_options
@click.option("--follow", "-f", is_flag=True, help="Keep draining as messages arrive, until Ctrl-C or SIGTERM.")
@click.option("--batch-size", default=500, show_default=True, help="Messages per window, at most.")
@click.option("--window-bytes", type=click.IntRange(1, 1 << 40), default=32 * 1024 * 1024, show_default=True,
              help="Payload bytes per window, about (large payloads make shorter windows).")
@click.option("--strict-order", is_flag=True, help="One publish in flight per subject.")
@click.option("--lease", type=float, default=None, metavar="SECONDS",
              help="How long a claimed window stays this relay's if it dies (default 30).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus /metrics and /healthz on this port while draining (needs pbuffer[metrics]).")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="The address --metrics-port listens on (0.0.0.0: every interface; IPv6 such as ::1 or :: too).")
@JSON
@friendly
def drain(url: str | None, servers: str, follow: bool, batch_size: int, window_bytes: int, strict_order: bool,
          lease: float | None, metrics_port: int | None, metrics_addr: str, as_json: bool, **options: Any) -> None:
    """Publish a buffer's messages to JetStream, deleting each after its PubAck.

    SIGTERM and Ctrl-C stop it after the window in flight: nothing is lost or left half-done. Stopped with
    messages left, it exits with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM); --follow exits 0.
    Ended with messages pending that were saved while it ran, it exits 3: the buffer is not empty (run it again,
    or use --follow). A buffer that does not exist is an error, with or without --follow (a typo would wait on an
    empty file). --json prints the summary as JSON (no progress bar). --metrics-port serves /metrics (Prometheus)
    and /healthz (200 while connected and making progress, 503 with the reason) while it runs.

    \b
    Example:
      pbuffer drain --url sqlite:///orders.db -s nats://127.0.0.1:4222 --follow --metrics-port 9464
    """
    code = asyncio.run(_drain(url, servers, follow, batch_size, strict_order, lease, connection_settings(options),
                              as_json, (metrics_addr, metrics_port) if metrics_port is not None else None,
                              window_bytes=window_bytes))
    if code:
        sys.exit(code)


async def _drain(url: str | None, servers: str, follow: bool, batch_size: int, strict_order: bool,
                 lease: float | None, options: dict[str, Any], as_json: bool = False,
                 metrics_at: tuple[str, int] | None = None, *, window_bytes: int = 32 * 1024 * 1024) -> int:
    """Drain (or follow) the buffer; returns the exit status."""
    from ..schema import require_buffer

    transport = await connect(servers, options)
    try:
        # A path that holds no buffer is a mistake (a typo): say so, create nothing.
        await asyncio.to_thread(require_buffer, buffer_url(url), upgradable=True)
        buf = await pbuffer.open_async(url)
    except BaseException:
        await transport.close()
        raise
    relay = pbuffer.Relay(buf, transport, batch_size=batch_size, window_bytes=window_bytes, strict_order=strict_order,
                          lease=lease)
    server = None
    if metrics_at is not None:
        from .. import metrics

        try:
            server = metrics.serve(buf, relay, metrics_at[1], metrics_at[0])
        except BaseException:
            await relay.close()
            await buf.close()
            raise
        err_console.print(f"metrics on {server.url}/metrics and {server.url}/healthz")
    loop = asyncio.get_running_loop()
    stopped_by: list[int] = []

    def stop(signum: int) -> None:
        stopped_by.append(signum)
        relay.stop()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop, int(sig))
    total = await buf.count()
    started = time.monotonic()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err_console,
                        disable=as_json)
    try:
        with progress:
            task = progress.add_task("draining" if not follow else "following", total=total or None, rate="")
            work = asyncio.ensure_future(relay.run() if follow else relay.drain())
            while not work.done():
                done = relay.stats.published + relay.stats.duplicates
                left = await buf.count()
                sent = max(total - left, 0) if not follow else done
                progress.update(task, completed=sent, total=None if follow else total,
                                rate=f"{sent / max(time.monotonic() - started, 1e-9):,.0f} msg/s")
                await asyncio.wait({work}, timeout=0.2)
            stats = work.result()
            left = await buf.count()
            progress.update(task, completed=stats.published + stats.duplicates if follow else total - left)
    finally:
        if server is not None:
            server.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await relay.close()
        await buf.close()
    return _drain_summary(stats, left, time.monotonic() - started, stopped_by, follow, as_json)


def _drain_summary(stats: pbuffer.RelayStats, left: int, seconds: float, stopped_by: list[int], follow: bool,
                   as_json: bool) -> int:
    """Print what a drain did (text or JSON); returns its exit status."""
    signal_name = signal.Signals(stopped_by[0]).name if stopped_by else None
    code = 0
    if not follow and left:
        # Not empty: a script must not take this for a finished drain. A signal says why; otherwise producers
        # saved while it ran, after it last found the buffer empty.
        code = 128 + stopped_by[0] if stopped_by else EXIT_PENDING
    if as_json:
        emit_json({"published": stats.published, "duplicates": stats.duplicates,
                    "dead_lettered": stats.dead_lettered, "retried": stats.retried, "seconds": round(seconds, 3),
                    "pending": left, "stopped_by": signal_name, "exit_status": code})
    else:
        console.print(f"published {stats.published:,}, duplicates {stats.duplicates:,}, dead-lettered "
                      f"{stats.dead_lettered:,}, retried {stats.retried:,} in {seconds:.1f} s")
    if code and stopped_by:
        err_console.print(f"stopped by {signal_name} with {left:,} message(s) left in the buffer")
    elif code:
        err_console.print(f"{left:,} message(s) pending at the end (saved while the drain ran); run it again or use "
                          "--follow")
    return code


# ------------------------------------------------------------------------------------------------------- send

@click.command()
@click.argument("subject")
@click.argument("data")
@URL
@SERVERS
@connection_options
@click.option("--header", "-H", "headers", multiple=True, metavar="NAME=VALUE", help="A header (repeatable).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the server.")
@JSON
@friendly
def send(subject: str, data: str, url: str | None, servers: str, headers: Sequence[str], timeout: float,
         as_json: bool, **options: Any) -> None:
    """Save DATA for SUBJECT to the buffer, then drain it (the CLI face of pbuffer.send).

    If the server does not take it in time, it stays in the buffer for the next drain (exit status 1).

    \b
    Example:
      pbuffer send orders.created '{"id": 7}' -H Content-Type=application/json
    """
    parsed = {}
    for header in headers:
        name, sep, value = header.partition("=")
        if not sep:
            raise pbuffer.ValidationError(f"header {header!r} is not NAME=VALUE")
        parsed[name] = value
    # Refuse bad input before connecting anywhere.
    check_subject(subject)
    check_headers(parsed)

    async def run() -> Message:
        transport = await connect(servers, connection_settings(options))
        try:
            try:
                await transport.js.find_stream_name_by_subject(subject)
            except Exception as exc:  # nats-py: NotFoundError, or an APIError saying the same
                raise pbuffer.PublishError(f"no JetStream stream covers subject {subject!r}; nothing was saved "
                                           "(create a stream for it first)") from exc
            with pbuffer.open(url) as buf:
                return await pbuffer.send(buf, transport, data.encode(), subject=subject, headers=parsed or None,
                                          timeout=timeout)
        finally:
            await transport.close()

    message = asyncio.run(run())
    if as_json:
        emit_json({"id": message.id, "subject": message.subject, "size": len(message.payload)})
    else:
        console.print(f"sent {message.id} on {escape(message.subject)}")


COMMANDS = (drain, send)
