"""The ``pbuffer`` command: the demo, and looking into and acting on a buffer without writing Python.

Every command takes the buffer URL from ``--url`` or ``$PBUFFER_URL`` (default: the user's data directory) and the
NATS servers from ``--servers`` or ``$NATS_URL``. A user's mistake prints one line and exits non-zero; ``--debug``
shows the traceback.

Looking never changes anything: ``inspect``, ``db verify``, ``db current`` and ``db check`` never create, initialise
or upgrade a buffer (an older schema is refused with the command that upgrades it), and no command creates a buffer
that is not there: a path that holds none is a typo more often than not, and a relay following an empty file it
made itself would wait for ever on the wrong one.

Exit status (:data:`EXIT_STATUS`, printed by ``pbuffer --help``): 0 done; 1 an error, a refused confirmation, or
something found wrong; 2 a usage error (an unknown option, a bad value); 3 ``drain`` ended with messages still
pending (saved while it ran: the buffer is not empty); 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM) when
``drain`` without ``--follow`` was stopped with messages left in the buffer.

``--json`` on a command that prints data puts one JSON document on stdout and nothing else there; progress, prompts,
warnings and errors go to stderr, and an error prints its one line there (stdout stays empty) with the same exit
status as without ``--json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import signal
import string
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import pbuffer

from .buffer import Buffer
from .errors import PBufferError
from .message import Message
from .registry import SQL_SCHEMES, display_url, scheme_of
from .terminal import escape, make_console, print_table
from .validation import check_headers, check_subject

__all__ = ["main"]

F = TypeVar("F", bound=Callable[..., Any])
console = make_console()
err_console = make_console(stderr=True)

URL = click.option("--url", envvar="PBUFFER_URL", default=None, metavar="URL",
                   help="Buffer URL [env PBUFFER_URL; default: buffer.db in your data directory].")
JSON = click.option("--json", "as_json", is_flag=True,
                    help="One JSON document on stdout, nothing else there (errors: one line on stderr).")
SERVERS = click.option("--servers", "-s", envvar="NATS_URL", default="nats://127.0.0.1:4222", show_default=True,
                       help="NATS server URL(s), comma-separated [env NATS_URL].")


def connection_options(fn: F) -> F:
    """Credentials and connection settings, as JetStreamTransport.connect takes them."""
    for option in reversed([
        click.option("--creds", type=click.Path(exists=True, dir_okay=False), help="NATS credentials file."),
        click.option("--user", help="User name."),
        click.option("--password", help="Password (prefer $NATS_PASSWORD)", envvar="NATS_PASSWORD"),
        click.option("--token", help="Token (prefer $NATS_TOKEN)", envvar="NATS_TOKEN"),
        click.option("--nkey-seed", type=click.Path(exists=True, dir_okay=False), help="NKEY seed file."),
        click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False),
                     help="CA certificate to trust for TLS."),
        click.option("--ping-interval", type=float, default=20, show_default=True, help="Seconds between pings."),
    ]):
        fn = option(fn)
    return fn


async def _transport(servers: str, options: dict[str, Any]) -> Any:
    from .relay.jetstream import JetStreamTransport

    tls = None
    if options.get("tls_ca"):
        import ssl

        tls = ssl.create_default_context(cafile=options["tls_ca"])
    return await JetStreamTransport.connect(
        [s.strip() for s in servers.split(",") if s.strip()], creds=options.get("creds"),
        user=options.get("user"), password=options.get("password"), token=options.get("token"),
        nkeys_seed=options.get("nkey_seed"), tls=tls, ping_interval=options.get("ping_interval", 20))


def _pick(options: dict[str, Any]) -> dict[str, Any]:
    keys = ("creds", "user", "password", "token", "nkey_seed", "tls_ca", "ping_interval")
    return {k: options[k] for k in keys if k in options}


def _open_existing(url: str | None, *, looking: str | None = None) -> Buffer:
    """Open a buffer that must already exist: a missing file or an empty database is refused, never created.

    ``looking`` names a command that only looks: it never upgrades either (an older schema is refused with the
    command that upgrades it). Other commands upgrade as :func:`pbuffer.open` does.
    """
    from .registry import parse_options
    from .schema import require_buffer

    target = url or pbuffer.default_url()
    require_buffer(target, upgradable=looking is None, where=looking)
    if looking is not None and "auto_upgrade" not in parse_options(target)[1] and scheme_of(target) in SQL_SCHEMES:
        return pbuffer.open(target, auto_upgrade=False)  # the check above ran; this closes the gap after it
    return pbuffer.open(target)


def _emit_json(data: Any) -> None:
    """The one JSON document a ``--json`` command prints on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _confirm(question: str, refused: str, *, err: bool = False) -> None:
    """Ask on stdin; anything but yes stops the command (exit status 1) with one line saying nothing was done.

    ``err``: ask on stderr (with ``--json``, stdout holds the document only).
    """
    try:
        if sys.stdin is None or sys.stdin.closed:  # Python sets sys.stdin to None when fd 0 is closed
            raise EOFError
        answer = click.confirm(question, default=False, err=err)
    except (click.Abort, EOFError, RuntimeError):  # click turns end of input and Ctrl-C into Abort
        click.echo(err=err)  # end the prompt's line
        err_console.print(f"[bold red]error:[/] no answer on stdin (closed, empty or interrupted): {refused}; "
                          "pass --yes to go ahead without asking")
        sys.exit(1)
    if not answer:
        err_console.print(f"aborted: {refused}")
        sys.exit(1)


def friendly(fn: F) -> F:
    """One clear line and a non-zero exit for a user's mistake; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PBufferError, OSError, ValueError) as exc:
            if click.get_current_context().find_root().params.get("debug"):
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


#: The exit statuses every command keeps, as ``pbuffer --help`` prints them.
EXIT_STATUS = """\b
Exit status:
  0        done
  1        an error, a refused confirmation, or something found wrong
  2        a usage error (an unknown option, a bad value)
  3        drain ended with messages still pending (saved while it ran)
  128+N    drain stopped by signal N with messages left (130 Ctrl-C, 143 SIGTERM)

\b
--json (on every command that prints data): one JSON document on stdout, nothing else there;
errors stay one line on stderr, with the same exit status.
"""
#: Exit status of a drain that ended with messages pending (the echo client's "still in the buffer" too).
EXIT_PENDING = 3


def _set_up_logging(verbose: int, quiet: bool, debug: bool) -> None:
    """Log lines on stderr: WARNING and up by default; -q errors only; -v and -vv add pbuffer's own INFO and DEBUG
    lines (not every library's: alembic alone says a dozen things at INFO); --debug, every logger's DEBUG."""
    if quiet and (verbose or debug):
        raise click.UsageError("-q cannot go with -v or --debug")
    # A no-op where the process already has logging set up (an embedding program, pytest): theirs wins.
    logging.basicConfig(level=logging.DEBUG if debug else logging.ERROR if quiet else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:  # only when asked: an explicit level on the pbuffer logger outlives this command in the process
        logging.getLogger("pbuffer").setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_STATUS)
@click.version_option(pbuffer.__version__, prog_name="pbuffer")
@click.option("--debug", is_flag=True, help="Show tracebacks and every library's debug logs.")
@click.option("--verbose", "-v", count=True,
              help="More of pbuffer's log lines on stderr: -v INFO, -vv DEBUG (default: WARNING and up).")
@click.option("--quiet", "-q", is_flag=True, help="Log errors only.")
def main(debug: bool, verbose: int, quiet: bool) -> None:
    """pbuffer: a durable client-side buffer for NATS JetStream.

    \b
    Examples:
      pbuffer demo                          an outage played end to end, nothing to set up
      pbuffer inspect --url sqlite:///buf.db --peek 5
      pbuffer drain --url sqlite:///buf.db -s nats://127.0.0.1:4222 --follow
      pbuffer -v watch --url sqlite:///buf.db
    """
    _set_up_logging(verbose, quiet, debug)


# ------------------------------------------------------------------------------------------------------- demo

@main.command()
@click.option("--messages", "-n", default=5000, show_default=True, help="How many messages to save and relay.")
@click.option("--servers", "-s", default=None, envvar=None,
              help="Use this NATS server instead of starting one (no outage is played then).")
@click.option("--fast-ingest", is_flag=True,
              help="Let the demo's stream take fast-ingest batches (allow_batched; nats-server >= 2.14).")
@friendly
def demo(messages: int, servers: str | None, fast_ingest: bool) -> None:
    """Play an outage: save while nats-server is down, then relay and get every echo back.

    \b
    Example:
      pbuffer demo --messages 10000
      pbuffer demo --fast-ingest
    """
    from .demo import run_demo

    result = asyncio.run(run_demo(messages, servers, console, fast_ingest=fast_ingest))
    sys.exit(0 if result.ok else 1)


# ---------------------------------------------------------------------------------------------------- inspect

def _printable(payload: bytes, width: int = 60) -> str:
    """Text if it is printable UTF-8, else hex; truncated."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    shown = text if text and all(c in string.printable or c.isprintable() for c in text) and \
        not any(c in "\r\x0b\x0c" for c in text) else f"0x{payload[: width // 2].hex()}"
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def _walk(buf: Buffer, page: int = 1000) -> Iterator[Message]:
    """Every pending message, a page at a time (bounded memory)."""
    after: str | None = None
    while True:
        chunk = buf.get_all(page, after=after)
        if not chunk:
            return
        yield from chunk
        after = chunk[-1].id


def _inspect_data(buf: Buffer, listed: int | None) -> dict[str, Any]:
    # Both from the counters: no walk over the messages, however many there are.
    stats = buf.stats()
    by_subject = buf.subject_stats()
    dead = buf.dead_letters(listed) if listed else []
    data: dict[str, Any] = {
        "pending": stats.pending, "dead": stats.dead, "bytes": stats.pending_bytes, "dead_bytes": stats.dead_bytes,
        "oldest_age_seconds": None if stats.oldest_age is None else round(stats.oldest_age, 3),
        "dropped": stats.dropped, "expired": stats.expired,
        "subjects": {subject: counts.pending for subject, counts in by_subject.items() if counts.pending},
        "by_subject": {subject: {"pending": c.pending, "bytes": c.pending_bytes, "dead": c.dead,
                                 "dead_bytes": c.dead_bytes, "dropped": c.dropped, "expired": c.expired}
                       for subject, c in by_subject.items()},
    }
    if listed:
        data["messages"] = [_message_json(m) for m in buf.get_all(listed)]
        data["dead_letters"] = [{**_message_json(d.message), "reason": d.reason, "attempts": d.attempts}
                                for d in dead]
    return data


def _message_json(message: Message) -> dict[str, Any]:
    return {"id": message.id, "subject": message.subject, "created_at": message.created_at.isoformat(),
            "headers": dict(message.headers), "size": len(message.payload), "payload": _printable(message.payload)}


@main.command()
@URL
@click.option("--list", "listed", is_flag=True, help="Show the 20 oldest messages and dead letters.")
@click.option("--peek", type=int, default=None, metavar="N", help="Show the N oldest messages and dead letters.")
@JSON
@friendly
def inspect(url: str | None, listed: bool, peek: int | None, as_json: bool) -> None:
    """Counts, size, age and subjects of a buffer; --list/--peek show messages (payloads safely).

    \b
    Example:
      pbuffer inspect --url sqlite:///orders.db --peek 5 --json
    """
    with _open_existing(url, looking="pbuffer inspect") as buf:
        data = _inspect_data(buf, peek if peek is not None else (20 if listed else None))
    if as_json:
        _emit_json(data)
        return
    age = data["oldest_age_seconds"]
    removed = (f"; {data['dropped']:,} dropped, {data['expired']:,} expired" if data["dropped"] or data["expired"]
               else "")
    console.print(f"[bold]{escape(display_url(url or pbuffer.default_url()))}[/]: {data['pending']:,} pending "
                  f"({data['bytes']:,} bytes), {data['dead']:,} dead; "
                  f"oldest {'-' if age is None else f'{age:,.1f} s'} old{removed}")
    if data["subjects"]:
        print_table(console, [(subject, f"{count:,}") for subject, count in data["subjects"].items()],
                    headers=("subject", "pending"))
    for title, rows in (("pending", data.get("messages")), ("dead letters", data.get("dead_letters"))):
        if rows:
            dead = title != "pending"
            print_table(console, [(row["id"], row["subject"], str(row["size"]), row["payload"],
                                   *([row["reason"], str(row["attempts"])] if dead else [])) for row in rows],
                        headers=("id", "subject", "size", "payload", *(("reason", "attempts") if dead else ())),
                        title=title)


# ------------------------------------------------------------------------------------------------------ watch

def _finite(value: float) -> float:
    # FloatRange lets NaN through: it compares false with both bounds.
    if math.isnan(value):
        raise click.BadParameter("must be a number")
    return value


@main.command()
@URL
@click.option("--once", is_flag=True, help="Print one frame and exit (two reads --interval apart, for the rates).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=1.0, show_default=True, metavar="SECONDS",
              callback=lambda _ctx, _param, value: _finite(value), help="Seconds between reads (0.1 to 3600).")
@click.option("--json", "as_json", is_flag=True, help="One frame as one JSON document on stdout (implies --once).")
@friendly
def watch(url: str | None, once: bool, interval: float, as_json: bool) -> None:
    """A live view of a buffer: pending, dead and bytes per subject, rates, oldest age, drops, claims.

    Refreshed every --interval; reads only counters and the claims at the head of the queue, so it costs the same
    on a million messages, runs beside producers and relays, and never creates, upgrades or changes a buffer.
    Ctrl-C ends it (exit status 0). Not on a terminal, each frame is printed as plain lines with the subjects
    tab-separated.

    \b
    The counters give, between two reads, saves minus deletions (pending + dead + dropped + expired changes by
    exactly that), not each on its own: "saved" is that net change when positive and "sent" (published, popped
    or purged) when negative, per second. Each is exact while the other side is idle, a lower bound otherwise.
    Claims: the live ones among the oldest 10,000 pending messages (Buffer.claim_stats), or "unknown" for a
    backend that cannot tell.

    \b
    Example:
      pbuffer watch --url sqlite:///orders.db
      pbuffer watch --url sqlite:///orders.db --once --json
    """
    from .watch import Watch, plain, render, take_sample

    with _open_existing(url, looking="pbuffer watch") as buf:
        watching = Watch(display_url(url or pbuffer.default_url()))
        watching.add(take_sample(buf))
        if once or as_json:
            time.sleep(interval)
            watching.add(take_sample(buf))
            frame = watching.frame()
            if as_json:
                _emit_json(frame.as_dict())
            elif console.is_terminal:
                console.print(render(frame, max_rows=max(console.height - 12, 5)))
            else:
                console.file.write(plain(frame))
            return
        with contextlib.suppress(KeyboardInterrupt):
            if not console.is_terminal:
                while True:  # a pipe or a file: each frame as plain lines, a blank line between frames
                    console.file.write(plain(watching.frame()) + "\n")
                    console.file.flush()
                    time.sleep(interval)
                    watching.add(take_sample(buf))
            from rich.live import Live

            with Live(render(watching.frame()), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)
                    watching.add(take_sample(buf))
                    live.update(render(watching.frame(), max_rows=max(console.height - 12, 5)), refresh=True)


# ------------------------------------------------------------------------------------------------------ drain

@main.command()
@URL
@SERVERS
@connection_options
@click.option("--follow", "-f", is_flag=True, help="Keep draining as messages arrive, until Ctrl-C or SIGTERM.")
@click.option("--batch-size", default=500, show_default=True, help="Messages per window.")
@click.option("--strict-order", is_flag=True, help="One publish in flight per subject.")
@click.option("--lease", type=float, default=None, metavar="SECONDS",
              help="How long a claimed window stays this relay's if it dies (default 30).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus /metrics and /healthz on this port while draining (needs pbuffer[metrics]).")
@click.option("--metrics-addr", default="127.0.0.1", show_default=True, metavar="ADDR",
              help="The address --metrics-port listens on (0.0.0.0: every interface).")
@JSON
@friendly
def drain(url: str | None, servers: str, follow: bool, batch_size: int, strict_order: bool, lease: float | None,
          metrics_port: int | None, metrics_addr: str, as_json: bool, **options: Any) -> None:
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
    code = asyncio.run(_drain(url, servers, follow, batch_size, strict_order, lease, _pick(options), as_json,
                              (metrics_addr, metrics_port) if metrics_port is not None else None))
    if code:
        sys.exit(code)


async def _drain(url: str | None, servers: str, follow: bool, batch_size: int, strict_order: bool,
                 lease: float | None, options: dict[str, Any], as_json: bool = False,
                 metrics_at: tuple[str, int] | None = None) -> int:
    """Drain (or follow) the buffer; returns the exit status."""
    from .schema import require_buffer

    transport = await _transport(servers, options)
    try:
        # A path that holds no buffer is a mistake (a typo): say so, create nothing.
        await asyncio.to_thread(require_buffer, url or pbuffer.default_url(), upgradable=True)
        buf = await pbuffer.open_async(url)
    except BaseException:
        await transport.close()
        raise
    relay = pbuffer.Relay(buf, transport, batch_size=batch_size, strict_order=strict_order, lease=lease)
    server = None
    if metrics_at is not None:
        from . import metrics

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
        _emit_json({"published": stats.published, "duplicates": stats.duplicates,
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

@main.command()
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
        transport = await _transport(servers, _pick(options))
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
        _emit_json({"id": message.id, "subject": message.subject, "size": len(message.payload)})
    else:
        console.print(f"sent {message.id} on {escape(message.subject)}")


# ---------------------------------------------------------------------------------------------- dead letters

@main.command()
@URL
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Requeue every dead letter.")
@JSON
@friendly
def requeue(url: str | None, ids: Sequence[str], everything: bool, as_json: bool) -> None:
    """Make dead letters pending again, at the back of the queue.

    \b
    Example:
      pbuffer requeue --url sqlite:///orders.db --all
    """
    if not ids and not everything:
        raise pbuffer.ValidationError("name dead-letter ids, or --all")
    with _open_existing(url) as buf:
        chosen = [d.message.id for d in buf.dead_letters()] if everything else list(ids)
        missed = [message_id for message_id in chosen if not buf.requeue(message_id)]
    done = len(chosen) - len(missed)
    if as_json:
        # not_found: no dead letter with that id (never one, already requeued, or deleted).
        _emit_json({"requeued": done, "asked": len(chosen), "not_found": missed})
    else:
        console.print(f"requeued {done:,} of {len(chosen):,}")
    if missed:
        sys.exit(1)


@main.command()
@URL
@click.option("--dead", "which", flag_value="dead", help="Only the dead letters.")
@click.option("--pending", "which", flag_value="pending", help="Only the pending messages.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@JSON
@friendly
def purge(url: str | None, which: str | None, yes: bool, as_json: bool) -> None:
    """Delete messages for good (pending, dead, or both). Asks first unless --yes.

    \b
    Example:
      pbuffer purge --url sqlite:///orders.db --dead --yes
    """
    with _open_existing(url) as buf:
        ids = []
        if which in (None, "pending"):
            ids += [m.id for m in _walk(buf)]
        if which in (None, "dead"):
            ids += [d.message.id for d in buf.dead_letters()]
        deleted = 0
        if ids and not yes:
            target = display_url(url or pbuffer.default_url())
            # click prints the question as plain text: no markup, so no escape().
            _confirm(f"Delete {len(ids):,} message(s) from {target} for good?", "nothing was deleted", err=as_json)
        if ids:
            deleted = sum(buf.delete_many(ids[i:i + 1000]) for i in range(0, len(ids), 1000))
    if as_json:
        _emit_json({"deleted": deleted})
    else:
        console.print(f"deleted {deleted:,} message(s)" if ids else "nothing to purge")


# --------------------------------------------------------------------------------------------------------- db

@main.group()
def db() -> None:
    """The buffer's database: schema (upgrade, downgrade, current, history, check) and damage (verify, quarantine)."""


@db.command("upgrade")
@URL
@click.option("--revision", default="head", show_default=True)
@JSON
@friendly
def db_upgrade(url: str | None, revision: str, as_json: bool) -> None:
    """Upgrade the schema (a sqlite file is backed up first). Example: pbuffer db upgrade --url URL

    A revision older than the database's is refused (use downgrade); prints the revision the database is at after.
    """
    _print_revision(pbuffer.upgrade(url or pbuffer.default_url(), revision), as_json)


def _print_revision(revision: str, as_json: bool) -> None:
    if as_json:
        _emit_json({"revision": revision})
    else:
        console.print(f"at revision {escape(revision)}")


@db.command("downgrade")
@URL
@click.option("--revision", required=True, help="A revision, or 'base' (drops the tables and their messages).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@JSON
@friendly
def db_downgrade(url: str | None, revision: str, yes: bool, as_json: bool) -> None:
    """Downgrade the schema. Example: pbuffer db downgrade --url URL --revision base"""
    target = url or pbuffer.default_url()
    if not yes:
        _confirm(f"Downgrade {display_url(target)} to {revision}? A downgrade can drop data.", "nothing was changed",
                 err=as_json)
    _print_revision(pbuffer.downgrade(target, revision), as_json)


@db.command("current")
@URL
@JSON
@friendly
def db_current(url: str | None, as_json: bool) -> None:
    """The database's schema revision (reads only). Example: pbuffer db current --url URL

    With --json, an empty database's revision is null.
    """
    revision = pbuffer.current(url or pbuffer.default_url())
    if as_json:
        _emit_json({"revision": revision})
    else:
        console.print(escape(revision or "base (empty)"))


@db.command("history")
@URL
@JSON
@friendly
def db_history(url: str | None, as_json: bool) -> None:
    """Every revision this pbuffer knows; the database's own is marked. Example: pbuffer db history"""
    revisions = pbuffer.history(url)
    if as_json:
        _emit_json({"revisions": [{"id": r.id, "description": r.description, "head": r.is_head,
                                   "current": r.is_current} for r in revisions]})
        return
    for revision in revisions:
        marks = " ".join(m for m, on in (("(head)", revision.is_head), ("(current)", revision.is_current)) if on)
        console.print(escape(f"{revision.id}  {revision.description} {marks}".rstrip()))


@db.command("check")
@URL
@JSON
@friendly
def db_check(url: str | None, as_json: bool) -> None:
    """Compare the database with this pbuffer's model (reads only). Example: pbuffer db check --url URL

    Exit status 1 when they differ (with --json too: {"ok": false, "differences": [...]}).
    """
    from .schema import require_buffer

    target = url or pbuffer.default_url()
    require_buffer(target, upgradable=True)  # an empty database is no buffer; an older one is listed below
    differences = pbuffer.check(target)
    if as_json:
        _emit_json({"ok": not differences, "differences": [str(d) for d in differences]})
        if differences:
            sys.exit(1)
        return
    for difference in differences:
        console.print(escape(str(difference)))
    if differences:
        sys.exit(1)
    console.print("the schema matches this pbuffer")


@db.command("verify")
@URL
@JSON
@friendly
def db_verify(url: str | None, as_json: bool) -> None:
    """Look for damage: sqlite's integrity_check, then every message's checksum.

    Prints the ids of damaged messages; exit status 1 if anything is wrong. Never upgrades the schema or creates a
    buffer; stop the relay and producers first.

    \b
    Example:
      pbuffer db verify --url sqlite:///orders.db --json
    """
    from .schema import require_buffer
    from .schema.recovery import verify

    target = url or pbuffer.default_url()
    # Refuses, reading only, what verify would otherwise create or upgrade: no buffer, an empty database, an older
    # schema. Damage and foreign files are what verify reports, in detail.
    with contextlib.suppress(pbuffer.CorruptDatabaseError, pbuffer.NotABufferDatabaseError):
        require_buffer(target, where="pbuffer db verify")
    report = verify(target)
    if as_json:
        _emit_json(report.as_dict())
    else:
        if report.integrity:
            console.print(escape(f"integrity_check: {'; '.join(report.integrity[:20])}"))
        console.print(f"checked {report.pending:,} pending message(s) and {report.dead:,} dead letter(s)")
        for message_id in report.damaged:
            console.print(escape(f"damaged: {message_id}"))
        for problem in report.problems:
            console.print(escape(f"problem: {problem}"))
        console.print("ok" if report.ok else "[bold red]NOT OK[/]")
    if not report.ok:
        sys.exit(1)


@db.command("quarantine")
@URL
@JSON
@friendly
def db_quarantine(url: str | None, as_json: bool) -> None:
    """Move a damaged sqlite buffer (with its -wal and -shm) aside; a fresh buffer can then start at its path.

    The files are renamed to <name>.quarantined-<UTC time> beside it, never deleted, and keep their mode. Refused
    while another process has the buffer open.

    \b
    Example:
      pbuffer db quarantine --url sqlite:///orders.db
    """
    from .schema.recovery import quarantine

    moved = quarantine(url or pbuffer.default_url())
    if as_json:
        _emit_json({"moved": [{"from": str(old), "to": str(new)} for old, new in moved]})
        return
    for old, new in moved:
        console.print(escape(f"moved {old} -> {new}"))


# ------------------------------------------------------------------------------------------------- passthrough

@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def echo(args: Sequence[str]) -> None:
    """The stream-echo example: pbuffer echo server|client ... (pbuffer echo --help)."""
    from .examples.echo import main as echo_main

    sys.exit(echo_main(list(args)))


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: Sequence[str]) -> None:
    """The benchmark harness: pbuffer bench [--quick] [--json FILE] ... (pbuffer bench --help)."""
    from importlib import import_module

    import_module("pbuffer.benchmarks.cli").main(list(args))


if __name__ == "__main__":
    main()
