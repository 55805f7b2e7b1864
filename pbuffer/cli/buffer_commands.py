"""Looking into a buffer and acting on its messages: ``pbuffer inspect``, ``watch``, ``requeue`` and ``purge``."""

from __future__ import annotations

import contextlib
import math
import string
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import click

import pbuffer

from ..buffer import Buffer
from ..message import Message
from ..registry import display_url
from .common import JSON, URL, buffer_url, confirm, console, emit_json, friendly, open_existing
from .terminal import escape, print_table

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


@click.command()
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
    target = buffer_url(url)
    with open_existing(target, looking="pbuffer inspect") as buf:
        data = _inspect_data(buf, peek if peek is not None else (20 if listed else None))
    if as_json:
        emit_json(data)
        return
    age = data["oldest_age_seconds"]
    removed = (f"; {data['dropped']:,} dropped, {data['expired']:,} expired" if data["dropped"] or data["expired"]
               else "")
    console.print(f"[bold]{escape(display_url(target))}[/]: {data['pending']:,} pending "
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


@click.command()
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
    Every message saved is counted in exactly one of pending, dead, dropped, expired and deleted (published,
    popped or purged), so between two reads "saved" is the growth of their sum and "sent" the growth of deleted,
    per second and per subject. A backend that does not count deletions gets net rates (saves minus deletions).
    Claims: the live ones among the oldest 10,000 pending messages (Buffer.claim_stats), or "unknown" for a
    backend that cannot tell.

    \b
    Example:
      pbuffer watch --url sqlite:///orders.db
      pbuffer watch --url sqlite:///orders.db --once --json
    """
    from .watch import Watch, plain, render, take_sample

    target = buffer_url(url)
    with open_existing(target, looking="pbuffer watch") as buf:
        watching = Watch(display_url(target))
        watching.add(take_sample(buf))
        if once or as_json:
            time.sleep(interval)
            watching.add(take_sample(buf))
            frame = watching.frame()
            if as_json:
                emit_json(frame.as_dict())
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


# ---------------------------------------------------------------------------------------------- dead letters

@click.command()
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
    with open_existing(buffer_url(url)) as buf:
        chosen = [d.message.id for d in buf.dead_letters()] if everything else list(ids)
        missed = [message_id for message_id in chosen if not buf.requeue(message_id)]
    done = len(chosen) - len(missed)
    if as_json:
        # not_found: no dead letter with that id (never one, already requeued, or deleted).
        emit_json({"requeued": done, "asked": len(chosen), "not_found": missed})
    else:
        console.print(f"requeued {done:,} of {len(chosen):,}")
    if missed:
        sys.exit(1)


@click.command()
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
    target = buffer_url(url)
    with open_existing(target) as buf:
        ids = []
        if which in (None, "pending"):
            ids += [m.id for m in _walk(buf)]
        if which in (None, "dead"):
            ids += [d.message.id for d in buf.dead_letters()]
        deleted = 0
        if ids and not yes:
            # click prints the question as plain text: no markup, so no escape().
            confirm(f"Delete {len(ids):,} message(s) from {display_url(target)} for good?", "nothing was deleted",
                    err=as_json)
        if ids:
            deleted = sum(buf.delete_many(ids[i:i + 1000]) for i in range(0, len(ids), 1000))
    if as_json:
        emit_json({"deleted": deleted})
    else:
        console.print(f"deleted {deleted:,} message(s)" if ids else "nothing to purge")


COMMANDS = (inspect, watch, requeue, purge)
