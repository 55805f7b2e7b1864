"""A buffer the user names with ``--url``: used as given, never created or dropped, and left as it was found.

The harness cannot make a fresh store on a URL it was handed (a role may lack CREATE DATABASE; a third-party
backend has no such notion), so it refuses a buffer that holds anything, pending or dead, and empties it after
every repetition: what is left is what was there before, nothing. pbuffer's tables (created by the first open
if the database had none) stay, and so do the counters' rows of the subject the cases save to, at zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pbuffer
from pbuffer.registry import display_url

__all__ = ["NotEmptyError", "check_empty", "empty", "used"]

#: Messages per get_all()/dead_letters() page and per delete_many() call while emptying.
_PAGE = 500


class NotEmptyError(RuntimeError):
    """The buffer at a ``--url`` holds messages: the harness would mix them with its own."""


def check_empty(url: str) -> None:
    """Raise :class:`NotEmptyError` if the buffer at ``url`` holds pending messages or dead letters."""
    buffer = pbuffer.open(url)
    try:
        pending, dead = len(buffer), len(buffer.dead_letters(1))
    finally:
        buffer.close()
    if pending or dead:
        raise NotEmptyError(
            f"the buffer at {display_url(url)} is not empty ({pending:,} pending"
            f"{', and dead letters' if dead else ''}): the benchmarks save, pop and delete there and empty it "
            "afterwards, so they only run on an empty buffer; give the URL of an empty one (a new sqlite file, "
            "or a database of its own)")


def empty(url: str) -> int:
    """Delete every pending message and dead letter of the buffer at ``url``; return how many."""
    removed = 0
    buffer = pbuffer.open(url)
    try:
        while ids := [message.id for message in buffer.get_all(_PAGE)]:
            removed += buffer.delete_many(ids)
        while ids := [dead.message.id for dead in buffer.dead_letters(_PAGE)]:
            removed += buffer.delete_many(ids)
    finally:
        buffer.close()
    return removed


@contextmanager
def used(url: str) -> Iterator[str]:
    """``url``, checked empty before a repetition uses it and emptied after (whatever the repetition did)."""
    check_empty(url)
    try:
        yield url
    finally:
        empty(url)
