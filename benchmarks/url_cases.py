"""``--url URL``: the core operations on a buffer the user names, any backend ``pbuffer.open`` knows (a third-party
one registered under the ``pbuffer.backends`` entry point included).

The URL is used as given (:mod:`.given`): no database is created, the buffer must be empty, and every repetition
leaves it empty. Cases are named ``url.<operation>``; the table's header names the URL, its password masked.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from . import workloads
from .harness import Case, Settings, count_label
from .workloads import WINDOW, Store

__all__ = ["PREFIX", "url_cases"]

PREFIX = "url"

#: key -> (op, what the subject does, workload, (full, quick) counts, unit, what is timed)
_OPERATIONS: dict[str, tuple[str, str, Callable[..., float], tuple[int, int], str, str]] = {
    "save": ("save", "save()", workloads.buffer_save, (2_000, 500), "msg/s",
             "save() of each message, one call (one transaction, where the backend has them) each."),
    "save_many": ("save_many", "save_many()", workloads.buffer_save_many, (20_000, 5_000), "msg/s",
                  "save_many() in batches of 1,000 messages."),
    "pop": ("pop", "pop()", workloads.buffer_pop, (2_000, 500), "msg/s",
            "pop() of each message from the buffer filled (untimed, save_many) with exactly the messages popped."),
    "get": ("get", "get()", workloads.buffer_get, (5_000, 1_000), "msg/s",
            "get() called once per message held: each reads the oldest, which stays (filled untimed)."),
    "get_all": ("get_all", f"get_all({WINDOW}, after=...)", workloads.buffer_get_all, (50_000, 10_000), "msg/s",
                f"Every message read in the relay's windows: get_all({WINDOW}, after=<the last id of the previous "
                "window>) until [] (filled untimed)."),
    "delete": ("delete", "delete(id)", workloads.buffer_delete, (2_000, 500), "msg/s",
               "delete(id) of each message, oldest first (filled untimed)."),
    "delete_many": ("delete", "delete_many()", workloads.buffer_delete_many, (20_000, 5_000), "msg/s",
                    f"delete_many() of {WINDOW} ids at a time, oldest first (filled untimed)."),
    "claim+delete_many": ("claim", f"claim({WINDOW}) + delete_many()", workloads.buffer_claim_delete,
                          (20_000, 5_000), "us/msg",
                          f"Microseconds per message (lower is better): claim({WINDOW}), claim the next window "
                          "behind it, delete_many() the first, until a claim returns [] (the relay's storage work)."),
}


def url_cases(settings: Settings) -> list[Case]:
    """The core operations on ``settings.url``; all of them run in quick mode too (at quick sizes)."""
    if settings.url is None:
        return []
    store = Store(PREFIX, given_url=settings.url)
    where = (f"On the buffer at {store.label} as given (--url): checked empty before each repetition, emptied "
             "after it (nothing created or dropped). ")
    cases = [
        Case(name=f"{PREFIX}.{key}", op=op, backend=PREFIX, subject_label=f"pbuffer {store.label} {label}",
             subject=partial(workload, store=store), count=settings.count(*counts), unit=unit,
             note=where + what + " No baseline and no target.", headline=True)
        for key, (op, label, workload, counts, unit, what) in _OPERATIONS.items()
    ]
    calls = 3 if settings.quick else 5
    n = settings.count(10_000, 1_000)
    cases.append(Case(
        name=f"{PREFIX}.stats {count_label(n)}", op="stats", backend=PREFIX,
        subject_label=f"stats() with {n:,} pending",
        subject=partial(workloads.buffer_stats, store=store, calls=calls), count=n, unit="ms", warmup=False,
        headline=True,
        note=where + f"Milliseconds per stats() call on the buffer holding {n:,} messages (filled once per case, "
             f"untimed): one untimed call, then the mean of {calls}. Lower is better. No target.",
    ))
    return cases
