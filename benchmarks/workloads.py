"""Workloads for pbuffer itself and for the plain-sqlite3 baselines (see :data:`.harness.Workload`).

A pbuffer workload runs on a :class:`Store`: where its buffer lives (memory, a sqlite file with a durability, or a
database server), fresh and empty for every repetition.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pbuffer
from pbuffer.ids import new_id
from pbuffer.registry import display_url

from . import given, servers
from .harness import Context, timed, timed_async, timed_threads
from .payload import current

__all__ = [
    "MEMORY",
    "SQLITE",
    "SQLITE_POWER",
    "SUBJECT",
    "Store",
    "aio_save",
    "buffer_claim_delete",
    "buffer_delete",
    "buffer_delete_many",
    "buffer_get",
    "buffer_get_all",
    "buffer_pop",
    "buffer_pop_backlog",
    "buffer_save",
    "buffer_save_many",
    "buffer_stats",
    "copy_backlog",
    "fill",
    "open_buffer",
    "sqlite3_executemany",
    "sqlite3_loop",
]

SUBJECT = "bench.x"
#: Messages per save_many call when a backlog is filled (untimed); bounds memory for a million messages.
FILL_CHUNK = 10_000
FILL_BYTES = 16 * 1024 * 1024
#: Messages per get_all() window and per delete_many() call: the relay's default window.
WINDOW = 500
_PLAIN_TABLE = "CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL)"
#: What Buffer.stats() returns must have (checked after each stats case).
STATS_FIELDS = ("pending", "pending_bytes", "dead", "dead_bytes", "oldest_age", "dropped", "expired")


@dataclass(frozen=True)
class Store:
    """Where a workload's buffer lives. ``backend``: ``memory``, ``sqlite``, ``postgresql`` or ``mariadb``;
    ``durability``: sqlite's (``process`` or ``power``); ``admin_url``: a server's (see :mod:`.servers`)."""

    backend: str = "sqlite"
    durability: str = "process"
    admin_url: str | None = None
    #: ``--url`` (backend ``url``): a buffer used as given, checked empty before each use and emptied after.
    given_url: str | None = None

    @property
    def server(self) -> bool:
        return self.backend in servers.SERVERS

    @property
    def label(self) -> str:
        if self.given_url is not None:
            return display_url(self.given_url)
        return f"sqlite [{self.durability}]" if self.backend == "sqlite" else self.backend

    def options(self) -> dict[str, Any]:
        return {"durability": self.durability} if self.backend == "sqlite" else {}

    def unavailable(self) -> str | None:
        """Why this store cannot be used here (a server not reachable, its driver missing), or ``None``."""
        if self.server:
            return servers.unreachable(self.backend, self._admin())
        return None

    def _admin(self) -> str:
        if self.admin_url is None:
            raise ValueError(f"a {self.backend} store needs an admin URL")
        return self.admin_url

    @contextmanager
    def url(self, directory: Path) -> Iterator[str]:
        """The URL of an empty store, removed afterwards (a server's database is dropped; a given URL's buffer
        is emptied)."""
        if self.given_url is not None:
            with given.used(self.given_url) as url:
                yield url
        elif self.backend == "memory":
            yield "memory://"  # private: goes with its buffer (a named store would stay for the process's life)
        elif self.backend == "sqlite":
            yield f"sqlite:///{directory / 'buffer.db'}"
        else:
            with servers.fresh_database(self._admin()) as url:
                yield url

    @contextmanager
    def open(self, directory: Path) -> Iterator[pbuffer.Buffer]:
        """A buffer on a fresh, empty store; closed (and the store removed) afterwards."""
        with self.url(directory) as url:
            buffer = pbuffer.open(url, **self.options())
            try:
                len(buffer)  # untimed: a first query, so no timed call pays for connecting to a server
                yield buffer
            finally:
                buffer.close()


MEMORY = Store("memory")
SQLITE = Store("sqlite")
SQLITE_POWER = Store("sqlite", "power")


def _open(directory: Path, backend: str, durability: str) -> pbuffer.Buffer:
    if backend == "memory":
        return pbuffer.open("memory://")
    return pbuffer.open(f"sqlite:///{directory / 'buffer.db'}", durability=durability)


def _fill(buffer: pbuffer.Buffer, count: int, payload: bytes | None = None) -> None:
    """Save ``count`` messages (untimed) in chunks."""
    payload = current() if payload is None else payload
    # Chunks hold at most FILL_BYTES of payload too, so a 64 KiB fill does not hold 600 MB at once.
    chunk = max(1, min(FILL_CHUNK, FILL_BYTES // max(1, len(payload))))
    for start in range(0, count, chunk):
        buffer.save_many([payload] * min(chunk, count - start), subject=SUBJECT)


def _fill_ids(buffer: pbuffer.Buffer, count: int) -> list[str]:
    """:func:`_fill`, returning the ids, oldest first (for the cases that need them: not a million)."""
    ids: list[str] = []
    for start in range(0, count, FILL_CHUNK):
        ids += [message.id for message in buffer.save_many([current()] * min(FILL_CHUNK, count - start),
                                                           subject=SUBJECT)]
    return ids


#: For the other workload modules (e2e.py): the same buffers and fill as here.
open_buffer = _open
fill = _fill


def _expect(condition: bool, what: str) -> None:
    # A workload that silently did less work would report a flattering rate.
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


def buffer_save(context: Context, directory: Path, n: int, *, store: Store = SQLITE,
                payload: bytes | None = None, metrics: bool = False) -> float:
    """``n`` single saves; ``metrics``: with ``pbuffer.metrics.serve()`` on the buffer, scraped every second
    meanwhile (Prometheus scrapes every 15-60 s by default)."""
    payload = current() if payload is None else payload
    with store.open(directory) as buffer, scraped_metrics(buffer) if metrics else nullcontext():
        save = buffer.save

        def run() -> None:
            for _ in range(n):
                save(payload, subject=SUBJECT)

        seconds = timed(run)
        _expect(len(buffer) == n, f"{n} messages saved")
        return seconds


@contextmanager
def scraped_metrics(buffer: pbuffer.Buffer, relay: pbuffer.Relay | None = None) -> Iterator[None]:
    """``pbuffer.metrics.serve()`` on a free port, with a thread fetching /metrics every second (the metrics cases
    of the save and drain benchmarks)."""
    import urllib.request

    from pbuffer import metrics

    server = metrics.serve(buffer, relay, port=0)
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
                response.read()
            done.wait(1.0)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        yield
    finally:
        done.set()
        scraper.join()
        server.close()


def thread_save(context: Context, directory: Path, n: int, *, store: Store = SQLITE_POWER,
                threads: int = 16) -> float:
    """``threads`` threads calling the synchronous save() on one buffer, ``n`` messages in all: saves that arrive
    while a commit runs share the next transaction (the Buffer's own group commit)."""
    with store.open(directory) as buffer:
        payload = current()
        seconds = timed_threads(lambda: buffer.save(payload, subject=SUBJECT), n, threads)
        _expect(len(buffer) == n, f"{n} messages saved")
        return seconds


def buffer_save_many(context: Context, directory: Path, n: int, *, store: Store = SQLITE,
                     batch: int = 1_000) -> float:
    with store.open(directory) as buffer:
        save_many = buffer.save_many
        batches = [[current()] * min(batch, n - start) for start in range(0, n, batch)]

        def run() -> None:
            for items in batches:
                save_many(items, subject=SUBJECT)

        seconds = timed(run)
        _expect(len(buffer) == n, f"{n} messages saved")
        return seconds


def buffer_pop(context: Context, directory: Path, n: int, *, store: Store = SQLITE,
               payload: bytes | None = None, waiting: int | None = None) -> float:
    """pop() ``n`` messages, one at a time, from a buffer holding ``waiting`` (default: exactly ``n``)."""
    held = n if waiting is None else max(n, waiting)
    with store.open(directory) as buffer:
        _fill(buffer, held, payload)
        pop = buffer.pop

        def run() -> None:
            for _ in range(n):
                pop()

        seconds = timed(run)
        _expect(len(buffer) == held - n, f"{n} messages popped")
        return seconds


def buffer_get(context: Context, directory: Path, n: int, *, store: Store = SQLITE) -> float:
    """``n`` calls of get() on a buffer holding ``n`` messages: each reads the oldest, which stays."""
    with store.open(directory) as buffer:
        first = _fill_ids(buffer, n)[0]
        get = buffer.get
        last: list[pbuffer.Message | None] = [None]

        def run() -> None:
            for _ in range(n):
                last[0] = get()

        seconds = timed(run)
        found = last[0]
        _expect(found is not None and found.id == first and len(buffer) == n, f"{n} gets of the oldest message")
        return seconds


def buffer_get_all(context: Context, directory: Path, n: int, *, store: Store = SQLITE,
                   window: int = WINDOW) -> float:
    """Read all ``n`` messages as a relay does: get_all(limit=window, after=<last id of the previous window>)."""
    with store.open(directory) as buffer:
        ids = _fill_ids(buffer, n)
        get_all = buffer.get_all
        read: list[str] = []

        def run() -> None:
            after: str | None = None
            while True:
                messages = get_all(window, after=after)
                if not messages:
                    break
                after = messages[-1].id
                read.append(after)

        seconds = timed(run)
        _expect(len(read) == -(-n // window) and read[-1] == ids[-1], f"{n} messages read in windows of {window}")
        return seconds


def buffer_delete(context: Context, directory: Path, n: int, *, store: Store = SQLITE) -> float:
    """delete(id) of each of ``n`` messages, oldest first (what a relay does after each PubAck, one at a time)."""
    with store.open(directory) as buffer:
        ids = _fill_ids(buffer, n)
        delete = buffer.delete
        deleted: list[bool] = []

        def run() -> None:
            deleted.extend(delete(message_id) for message_id in ids)

        seconds = timed(run)
        _expect(all(deleted) and len(deleted) == n and len(buffer) == 0, f"{n} messages deleted")
        return seconds


def buffer_delete_many(context: Context, directory: Path, n: int, *, store: Store = SQLITE,
                       window: int = WINDOW) -> float:
    """delete_many() of ``n`` messages in windows of ``window`` ids, oldest first (the relay's way)."""
    with store.open(directory) as buffer:
        ids = _fill_ids(buffer, n)
        windows = [ids[start:start + window] for start in range(0, n, window)]
        delete_many = buffer.delete_many
        deleted: list[int] = []

        def run() -> None:
            deleted.extend(delete_many(chunk) for chunk in windows)

        seconds = timed(run)
        _expect(sum(deleted) == n and len(buffer) == 0, f"{n} messages deleted")
        return seconds


def buffer_claim_delete(context: Context, directory: Path, n: int, *, store: Store = SQLITE,
                        window: int = WINDOW) -> float:
    """Microseconds per message to drain ``n`` messages the relay's way, without publishing: claim() a window of
    ``window``, claim the next one behind it (the relay's read-ahead), delete_many() the first, and so on until a
    claim comes back empty."""
    with store.open(directory) as buffer:
        _fill(buffer, n)
        claim, delete_many, owner = buffer.claim, buffer.delete_many, new_id()
        deleted: list[int] = []

        def run() -> None:
            messages = claim(window, owner=owner, lease=60.0)
            while messages:
                following = claim(window, owner=owner, lease=60.0, after=messages[-1].id)
                deleted.append(delete_many([message.id for message in messages]))
                messages = following

        seconds = timed(run)
        _expect(sum(deleted) == n and len(buffer) == 0, f"{n} messages claimed and deleted")
        return seconds / n * 1e6


def aio_save(context: Context, directory: Path, n: int, *, store: Store = SQLITE_POWER, tasks: int = 64,
             group_commit: bool = True) -> float:
    """``tasks`` concurrent producers (asyncio tasks) on one :class:`pbuffer.AsyncBuffer`, each awaiting its saves
    one after another, ``n`` messages in all; with group commit, saves made while a commit runs share the next."""

    async def main(buffer: pbuffer.Buffer) -> float:
        facade = pbuffer.AsyncBuffer(buffer, group_commit=group_commit)
        try:
            _expect(facade.group_commit == (group_commit and buffer.blocking), "group commit as asked")
            counts = [n // tasks + (1 if task < n % tasks else 0) for task in range(tasks)]
            payload = current()

            async def producer(count: int) -> None:
                for _ in range(count):
                    await facade.save(payload, subject=SUBJECT)

            async def run() -> None:
                await asyncio.gather(*(producer(count) for count in counts if count))

            return await timed_async(run)
        finally:
            await facade.close(close_buffer=False)

    with store.open(directory) as buffer:
        seconds = asyncio.run(main(buffer))
        _expect(len(buffer) == n, f"{n} messages saved")
        return seconds


@contextmanager
def _held(store: Store, n: int) -> Iterator[str]:
    """The URL of a store holding ``n`` messages, filled once (for a read-only case's repetitions to share); the
    filling buffer stays open meanwhile. memory: a named store, so the repetitions' buffers share it (it stays
    until the case's process ends)."""
    with store.url(Path(".")) as fresh:
        url = f"memory://bench-held-{uuid.uuid4().hex}" if fresh == "memory://" else fresh
        buffer = pbuffer.open(url, **store.options())
        try:
            _fill(buffer, n)
            yield url
        finally:
            buffer.close()


def buffer_stats(context: Context, directory: Path, n: int, *, store: Store = SQLITE, calls: int = 5) -> float:
    """Milliseconds per ``stats()`` call (the mean of ``calls`` calls, after one untimed call) on a buffer holding
    ``n`` messages. sqlite: a fresh copy of a backlog file written once per run; memory and servers: one store
    filled once per case, shared by its repetitions (stats() only reads)."""
    if store.backend == "sqlite":
        url = f"sqlite:///{copy_backlog(context, directory, n)}"
    else:
        url = context.resource(f"held-{store.backend}-{n}", lambda: _held(store, n))
    buffer = pbuffer.open(url, **store.options())
    try:
        stats = buffer.stats
        first = stats()
        missing = [name for name in STATS_FIELDS if not hasattr(first, name)]
        _expect(not missing, f"stats() has {', '.join(STATS_FIELDS)} (missing: {', '.join(missing)})")
        pending = getattr(first, "pending", None)
        _expect(pending == n, f"stats().pending == {n} (got {pending})")

        def run() -> None:
            for _ in range(calls):
                stats()

        return timed(run) / calls * 1000
    finally:
        buffer.close()


def copy_backlog(context: Context, directory: Path, backlog: int) -> Path:
    """Put a sqlite buffer holding ``backlog`` messages (durability "process") into ``directory`` and return its
    database file: a copy of a file written once per run with save_many, the fill being slower than most timed
    operations."""

    def build(template: Path) -> None:
        buffer = _open(template, "sqlite", "process")
        try:
            _fill(buffer, backlog)
        finally:
            buffer.close()

    # The payload size is in the key: a template is shared on disk by every case's process of the run.
    template = context.template(f"sqlite-backlog-{backlog}-{len(current())}", build)
    for file in template.iterdir():
        shutil.copyfile(file, directory / file.name)
    return directory / "buffer.db"


def buffer_pop_backlog(context: Context, directory: Path, n: int, *, backlog: int) -> float:
    """Pop ``n`` messages from the front of a sqlite buffer holding ``backlog`` messages.

    The backlog is written once per run and copied for each repetition (filling a million messages takes
    longer than all the timed pops). When ``n`` exceeds it, the pops run in rounds of ``backlog``, refilled
    untimed in between, so every round starts with ``backlog`` messages waiting.
    """

    copy_backlog(context, directory, backlog)
    buffer = _open(directory, "sqlite", "process")
    try:
        pop = buffer.pop
        seconds = 0.0
        done = size = 0
        while done < n:
            size = min(backlog, n - done)

            def run(size: int = size) -> None:
                for _ in range(size):
                    pop()

            seconds += timed(run)
            done += size
            if done < n:
                _expect(len(buffer) == backlog - size, f"{size} messages popped")
                _fill(buffer, size)
        _expect(len(buffer) == backlog - size, f"{n} messages popped")
        return seconds
    finally:
        buffer.close()


def buffer_save_backlog(context: Context, directory: Path, n: int, *, backlog: int) -> float:
    """Save ``n`` messages, one transaction each, into a sqlite buffer already holding ``backlog`` messages."""
    copy_backlog(context, directory, backlog)
    buffer = _open(directory, "sqlite", "process")
    try:
        save = buffer.save
        payload = current()

        def run() -> None:
            for _ in range(n):
                save(payload, subject=SUBJECT)

        seconds = timed(run)
        _expect(len(buffer) == backlog + n, f"{n} messages saved behind {backlog:,}")
        return seconds
    finally:
        buffer.close()


def _plain(directory: Path, synchronous: str) -> sqlite3.Connection:
    connection = sqlite3.connect(directory / "plain.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(_PLAIN_TABLE)
    return connection


def _count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])


def seed_buffer_save(context: Context, directory: Path, n: int, *, payload: bytes | None = None) -> float:
    """The original design's Buffer.save(): python's sqlite3 with sqlite's defaults (a rollback journal,
    synchronous=FULL) and a commit per message, into a table of the subject and the payload in save order."""
    payload = current() if payload is None else payload
    connection = sqlite3.connect(directory / "seed.db")
    try:
        connection.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT NOT NULL, "
                           "payload BLOB NOT NULL)")
        connection.commit()
        execute, commit = connection.execute, connection.commit
        insert = "INSERT INTO messages (subject, payload) VALUES (?, ?)"

        def run() -> None:
            for _ in range(n):
                execute(insert, (SUBJECT, payload))
                commit()

        seconds = timed(run)
        _expect(_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()


def sqlite3_loop(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL",
                 payload: bytes | None = None) -> float:
    """The floor under save(): python's sqlite3, one BEGIN IMMEDIATE transaction per message."""
    payload = current() if payload is None else payload
    connection = _plain(directory, synchronous)
    try:
        execute = connection.execute
        insert = "INSERT INTO messages (payload) VALUES (?)"

        def run() -> None:
            for _ in range(n):
                execute("BEGIN IMMEDIATE")
                execute(insert, (payload,))
                execute("COMMIT")

        seconds = timed(run)
        _expect(_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()


def sqlite3_executemany(context: Context, directory: Path, n: int, *, synchronous: str = "NORMAL",
                        batch: int = 1_000) -> float:
    """The floor under save_many(): one executemany transaction per batch."""
    connection = _plain(directory, synchronous)
    try:
        execute, executemany = connection.execute, connection.executemany
        insert = "INSERT INTO messages (payload) VALUES (?)"
        batches = [[(current(),)] * min(batch, n - start) for start in range(0, n, batch)]

        def run() -> None:
            for rows in batches:
                execute("BEGIN IMMEDIATE")
                executemany(insert, rows)
                execute("COMMIT")

        seconds = timed(run)
        _expect(_count(connection) == n, f"{n} rows inserted")
        return seconds
    finally:
        connection.close()
