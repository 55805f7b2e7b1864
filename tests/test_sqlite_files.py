"""What only sqlite files do: private files, refusing foreign or newer files untouched, pragmas, corruption."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

import pbuffer
from pbuffer import CorruptDatabaseError, NotABufferDatabaseError, SchemaTooNewError


def url(path: Path, **query: str) -> str:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    return f"sqlite:///{path}" + (f"?{suffix}" if suffix else "")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of a sqlite database (main, -wal, -shm) by name, read only after all connections closed."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


def test_files_and_directories_are_private(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "new" / "deeper" / "buffer.db"
    with pbuffer.open(url(path)) as buf:
        buf.save(b"x", subject="a")
        files = [p for p in path.parent.iterdir() if p.name.startswith("buffer.db")]
        assert {p.name for p in files} >= {"buffer.db", "buffer.db-wal", "buffer.db-shm"}
        for p in files:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    for directory in (tmp_path / "new", tmp_path / "new" / "deeper"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_existing_directories_keep_their_mode(tmp_path: Path, umask_022: None) -> None:
    os.chmod(tmp_path, 0o755)
    pbuffer.open(url(tmp_path / "b.db")).close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_new_file_settings(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    pbuffer.open(url(path)).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        objects = {tuple(row) for row in conn.execute("SELECT type, name FROM sqlite_master")}
        assert ("table", "pbuffer_messages_0005") in objects and ("table", "pbuffer_alembic_version") in objects
        assert conn.execute("SELECT version_num FROM pbuffer_alembic_version").fetchall() == [("0005",)]
    finally:
        conn.close()


@pytest.mark.parametrize(("durability", "synchronous"), [("process", 1), ("power", 2)])
def test_durability_sets_synchronous(tmp_path: Path, durability: str, synchronous: int) -> None:
    with pbuffer.open(url(tmp_path / "b.db", durability=durability)) as buf:
        assert buf.durability == durability  # type: ignore[attr-defined]
        conn = buf._connections.take("test")  # type: ignore[attr-defined]
        try:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
            assert conn.execute("PRAGMA trusted_schema").fetchone()[0] == 0
        finally:
            buf._connections.give_back(conn)  # type: ignore[attr-defined]


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(pbuffer.ConfigurationError, match="durability"):
        pbuffer.open(url(tmp_path / "b.db"), durability="disk")
    with pytest.raises(pbuffer.ConfigurationError, match="busy_timeout"):
        pbuffer.open(url(tmp_path / "b.db"), busy_timeout=-1)
    with pytest.raises(pbuffer.ConfigurationError, match="memory://"):
        pbuffer.open("sqlite://")
    with pytest.raises(pbuffer.ConfigurationError, match="memory://"):
        pbuffer.open("sqlite:///:memory:")


def test_foreign_sqlite_file_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = snapshot(path)
    with pytest.raises(NotABufferDatabaseError, match="not a pbuffer buffer"):
        pbuffer.open(url(path))
    assert snapshot(path) == before


@pytest.mark.parametrize("content", [
    b"hello, I am a text file\n" * 100, os.urandom(8192), b"SQLite format 3\x00" + b"\xff" * 200,
])
def test_file_that_is_not_sqlite_is_refused_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(content)
    with pytest.raises(NotABufferDatabaseError):
        pbuffer.open(url(path))
    assert snapshot(path) == {"notes.db": content}


@pytest.mark.parametrize("ddl", [
    "CREATE TRIGGER steal AFTER INSERT ON pbuffer_messages_0005 BEGIN DELETE FROM pbuffer_messages_0005; END",
    "CREATE VIEW peek AS SELECT payload FROM pbuffer_messages_0005",
    "CREATE TABLE extra (x)",
    "CREATE INDEX ix_extra ON pbuffer_messages_0005 (subject)",
])
def test_planted_schema_objects_are_refused(tmp_path: Path, ddl: str) -> None:
    path = tmp_path / "b.db"
    with pbuffer.open(url(path)) as buf:
        buf.save(b"keep me", subject="a")
    conn = sqlite3.connect(path)
    conn.execute(ddl)
    conn.commit()
    conn.close()
    before = snapshot(path)
    with pytest.raises(NotABufferDatabaseError, match="did not create"):
        pbuffer.open(url(path))
    assert snapshot(path) == before


def test_schema_too_new_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with pbuffer.open(url(path)) as buf:
        buf.save(b"from the future", subject="a")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE pbuffer_alembic_version SET version_num = '9999'")
    conn.commit()
    conn.close()
    before = snapshot(path)
    with pytest.raises(SchemaTooNewError, match="newer pbuffer"):
        pbuffer.open(url(path))
    assert snapshot(path) == before


def test_flipped_byte_on_disk_is_reported_never_returned(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    marker = b"PAYLOAD-" + b"0123456789" * 10
    with pbuffer.open(url(path)) as buf:
        first = buf.save(marker, subject="a")
        second = buf.save(b"intact", subject="a")
    # All connections are closed, so the WAL was checkpointed into the main file: damage one byte there.
    data = bytearray(path.read_bytes())
    at = data.index(marker) + 20
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pbuffer.open(url(path)) as buf:
        with pytest.raises(CorruptDatabaseError) as caught:
            buf.get()
        assert caught.value.message_id == first.id
        assert first.id in str(caught.value)
        with pytest.raises(CorruptDatabaseError):
            buf.pop()
        assert len(buf) == 2  # the failed pop removed nothing
        assert buf.mark_dead(first.id, "corrupt") is True  # a damaged message can be moved aside
        assert buf.pop().id == second.id  # type: ignore[union-attr]


def test_damaged_page_is_caught_at_open(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with pbuffer.open(url(path)) as buf:
        buf.save_many([os.urandom(200) for _ in range(2000)], subject="a")
    data = bytearray(path.read_bytes())
    page = 4096
    # Scribble over an interior page of the table: structure, not just payload.
    data[page * 3 : page * 3 + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatabaseError):
        pbuffer.open(url(path))


def test_reopen_concurrently_initialised_file(tmp_path: Path) -> None:
    """Two buffers on one new file: the second opener finds the schema the first one made."""
    path = tmp_path / "b.db"
    with pbuffer.open(url(path)) as a, pbuffer.open(url(path)) as b:
        saved = a.save(b"x", subject="s")
        assert b.pop().id == saved.id  # type: ignore[union-attr]


def test_space_goes_back_after_a_backlog_drains(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with pbuffer.open(url(path)) as buf:
        for _ in range(8):
            buf.save_many([os.urandom(100) for _ in range(10_000)], subject="a")
    peak = path.stat().st_size
    with pbuffer.open(url(path)) as buf:
        while window := buf.get_all(1000):
            buf.delete_many([m.id for m in window])  # as the relay deletes after PubAcks
        assert len(buf) == 0
        # Reclaimed while the buffer is open, not only when it is closed.
        assert path.stat().st_size < peak * 0.10, (path.stat().st_size, peak)
    with pbuffer.open(url(path)) as buf:
        buf.save_many([b"x"] * 10, subject="a")  # a reclaimed file is a normal buffer
        assert buf.reclaim(force=True) >= 0
        assert len(buf) == 10


@pytest.mark.parametrize("holder", ["another process", "another thread"])
def test_a_held_write_lock_times_out_with_nothing_written(tmp_path: Path, holder: str) -> None:
    # Where the sqlite library has the WAL-reset bug, writes take a lock file (flock across processes, a thread
    # lock within one); a writer that cannot get it within busy_timeout must fail, typed, and write nothing.
    import fcntl
    import threading

    from pbuffer import BackendError

    path = tmp_path / "buffer.db"
    with pbuffer.open(url(path, busy_timeout="0.3"), serialize_writes=True) as buf:
        buf.save(b"before", subject="a")
        release = threading.Event()
        if holder == "another process":
            # flock belongs to an open file description: a second one conflicts as another process's would.
            fd = os.open(path.with_name("buffer.db.lock"), os.O_RDWR)
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            held = threading.Event()

            def hold() -> None:
                with buf._write_lock:  # type: ignore[attr-defined]
                    held.set()
                    release.wait(10)

            thread = threading.Thread(target=hold)
            thread.start()
            assert held.wait(10)
        try:
            with pytest.raises(BackendError, match=f"{holder} held the write lock .* nothing was written"):
                buf.save(b"lost?", subject="a")
            with pytest.raises(BackendError, match="nothing was written"):
                buf.pop()
        finally:
            if holder == "another process":
                os.close(fd)
            else:
                release.set()
                thread.join()
        assert [m.payload for m in buf.get_all()] == [b"before"]
        buf.save(b"after", subject="a")  # the lock is free again: writes go on
        assert [m.payload for m in buf.get_all()] == [b"before", b"after"]


def test_rows_are_stored_as_blobs_and_null_headers_whichever_way_they_were_bound(tmp_path: Path) -> None:
    # sqlite saves bind ids and payloads up to 4 KiB as bytearrays and leave the headers column out of rows
    # without headers: what the file holds must be what it held before (blobs, NULL), for any reader of the file.
    path = tmp_path / "buffer.db"
    with pbuffer.open(url(path)) as buf:
        buf.save(b"", subject="a")
        buf.save(b"x" * 4097, subject="a")
        buf.save_many([b"y", b"z" * 5000], subject="a")
        buf.save(b"h", subject="a", headers={"K": "v"})
        buf.save_many([b"m", pbuffer.Outgoing(b"n", headers={"K": "v"})], subject="a")
    connection = sqlite3.connect(path)
    try:
        table = connection.execute("SELECT name FROM sqlite_master WHERE name LIKE 'pbuffer_messages_%'").fetchone()[0]
        rows = connection.execute(f"SELECT typeof(id), length(id), typeof(payload), length(payload), "
                                  f"typeof(headers) FROM {table} ORDER BY seq").fetchall()
    finally:
        connection.close()
    assert rows == [("blob", 16, "blob", 0, "null"), ("blob", 16, "blob", 4097, "null"),
                    ("blob", 16, "blob", 1, "null"), ("blob", 16, "blob", 5000, "null"),
                    ("blob", 16, "blob", 1, "text"), ("blob", 16, "blob", 1, "null"), ("blob", 16, "blob", 1, "text")]


def test_an_interrupt_right_after_the_write_lock_was_taken_leaves_it_free(tmp_path: Path) -> None:
    """A KeyboardInterrupt that lands as the write lock's thread lock is taken (before the code that releases it
    on errors runs) must not leave it held: later writes failed after busy_timeout and close() blocked for ever
    (found with real signals)."""
    import threading

    path = tmp_path / "buffer.db"
    buf = pbuffer.open(url(path, busy_timeout="1"), serialize_writes=True)
    lock = buf._write_lock  # type: ignore[attr-defined]
    real = lock._thread_lock

    class InterruptedAfterAcquire:
        """The thread lock; its first acquire succeeds, then raises as a Ctrl-C arriving right then would."""

        def __init__(self) -> None:
            self.interrupt = True

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            got = real.acquire(blocking, timeout)
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            return bool(got)

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def __enter__(self) -> object:
            return real.__enter__()

        def __exit__(self, *exc_info: object) -> object:
            return real.__exit__(*exc_info)

    lock._thread_lock = InterruptedAfterAcquire()
    with pytest.raises(KeyboardInterrupt):
        buf.save(b"interrupted", subject="a")
    buf.save(b"next", subject="a")  # raised "another thread held the write lock" after busy_timeout
    closing = threading.Thread(target=buf.close, daemon=True)
    closing.start()
    closing.join(10)
    assert not closing.is_alive(), "close() waits for a lock nobody holds"
    with pbuffer.open(url(path)) as again:
        assert [m.payload for m in again.get_all()] == [b"next"]
