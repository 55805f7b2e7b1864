"""``pbuffer db``: the buffer's database, its schema (upgrade, downgrade, current, history, check) and damage (verify,
quarantine)."""

from __future__ import annotations

import contextlib
import sys

import click

import pbuffer

from ..registry import display_url
from .common import JSON, URL, buffer_url, confirm, console, emit_json, friendly
from .terminal import escape

# --------------------------------------------------------------------------------------------------------- db

@click.group()
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
    _print_revision(pbuffer.upgrade(buffer_url(url), revision), as_json)


def _print_revision(revision: str, as_json: bool) -> None:
    if as_json:
        emit_json({"revision": revision})
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
    target = buffer_url(url)
    if not yes:
        confirm(f"Downgrade {display_url(target)} to {revision}? A downgrade can drop data.", "nothing was changed",
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
    revision = pbuffer.current(buffer_url(url))
    if as_json:
        emit_json({"revision": revision})
    else:
        console.print(escape(revision or "base (empty)"))


@db.command("history")
@URL
@JSON
@friendly
def db_history(url: str | None, as_json: bool) -> None:
    """Every revision this pbuffer knows; the database's own is marked. Example: pbuffer db history"""
    # Not buffer_url(url): without --url (or $PBUFFER_URL) no database is read and none is marked current.
    revisions = pbuffer.history(url)
    if as_json:
        emit_json({"revisions": [{"id": r.id, "description": r.description, "head": r.is_head,
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
    from ..schema import require_buffer

    target = buffer_url(url)
    require_buffer(target, upgradable=True)  # an empty database is no buffer; an older one is listed below
    differences = pbuffer.check(target)
    if as_json:
        emit_json({"ok": not differences, "differences": [str(d) for d in differences]})
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
    from ..schema import require_buffer
    from ..schema.recovery import verify

    target = buffer_url(url)
    # Refuses, reading only, what verify would otherwise create or upgrade: no buffer, an empty database, an older
    # schema. Damage and foreign files are what verify reports, in detail.
    with contextlib.suppress(pbuffer.CorruptDatabaseError, pbuffer.NotABufferDatabaseError):
        require_buffer(target, where="pbuffer db verify")
    report = verify(target)
    if as_json:
        emit_json(report.as_dict())
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
    from ..schema.recovery import quarantine

    moved = quarantine(buffer_url(url))
    if as_json:
        emit_json({"moved": [{"from": str(old), "to": str(new)} for old, new in moved]})
        return
    for old, new in moved:
        console.print(escape(f"moved {old} -> {new}"))


COMMANDS = (db,)
