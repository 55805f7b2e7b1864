"""A full disk on a real filesystem, and damaged files: truncated, torn -wal, not sqlite; and the recovery tools.

The full-disk tests mount a small tmpfs (root or CAP_SYS_ADMIN needed: skipped without it, failed when CI is set),
so sqlite meets a real ENOSPC, in its -wal or in a checkpoint, rather than the max_page_count limit of
tests/test_sql_backends.py.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pbuffer.backends.tables import MESSAGES

import pbuffer
from pbuffer import CorruptDatabaseError, Message, NotABufferDatabaseError, StorageFullError
from pbuffer.schema.recovery import verify

MiB = 1024 * 1024


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def numbered(i: int) -> bytes:
    """A ~100-byte payload that says which message it is."""
    return f"message {i:08d} ".encode().ljust(100, b".")


def read_all(buf: pbuffer.Buffer) -> list[Message]:
    """Every pending message, a page at a time, as a relay reads them."""
    found: list[Message] = []
    while chunk := buf.get_all(1000, after=found[-1].id if found else None):
        found.extend(chunk)
    return found


def integrity(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


# ---------------------------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_fs() -> Iterator[Callable[[int], Path]]:
    """Mount tmpfs filesystems of a given size; unmounted (with whatever is on them) at teardown."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        point = Path(tempfile.mkdtemp(prefix="pbuffer-small-fs-"))
        try:
            run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(point)],
                                 capture_output=True, text=True, timeout=30, check=False)
            failure = (run.stderr.strip() or f"exit status {run.returncode}") if run.returncode else None
        except OSError as exc:  # no mount command
            failure = str(exc)
        if failure:
            point.rmdir()
            reason = f"cannot mount a tmpfs for a real full disk (needs root or CAP_SYS_ADMIN): {failure}"
            if os.environ.get("CI"):
                pytest.fail(reason)
            pytest.skip(reason)
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        if subprocess.run(["umount", str(point)], capture_output=True, timeout=30, check=False).returncode:
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=30, check=False)
        point.rmdir()


# Two ways a disk fills: below sqlite's automatic checkpoint (1,000 pages, 4 MiB of -wal) the -wal fills the disk
# before anything reaches the main file; above it, checkpoints grow the main file until one cannot (sqlite ignores a
# failed automatic checkpoint), and the -wal then grows into the last free bytes. (filesystem size, room freed
# later): the first checkpoint after room is freed copies the -wal's new pages into the main file, which takes up to
# the -wal's size (4 MiB) of the freed room before saves get any, so the larger case frees more than that.
SIZES = [pytest.param((2 * MiB, MiB // 2), id="wal-fills-the-disk"),
         pytest.param((18 * MiB, 6 * MiB), id="after-checkpoints")]


def fill(buf: pbuffer.Buffer, start: int, saved: list[Message]) -> None:
    """save_many in batches, then save one at a time, until each raises StorageFullError."""
    number = start
    while True:
        batch = [numbered(i) for i in range(number, number + 200)]
        try:
            saved.extend(buf.save_many(batch, subject="disk.full"))
        except StorageFullError:
            break
        number += 200


def check_scenario(path: Path, size: int) -> None:
    """The disk filled the way the parameter says (so both paths really ran)."""
    main, wal = path.stat().st_size, Path(f"{path}-wal").stat().st_size
    print(f"full at {size / MiB:g} MiB: main file {main:,} B, -wal {wal:,} B")  # the figures, with pytest -s
    if size < 4 * MiB:
        assert main < MiB < wal, (main, wal)
    else:
        # The main file took the checkpointed pages; the -wal went past the 1,000 frames where sqlite checkpoints,
        # because the checkpoint that needed the main file to grow failed.
        assert main > 4 * MiB and wal > 1000 * (4096 + 24), (main, wal)


def disk_with_filler(small_fs: Callable[[int], Path], size: tuple[int, int]) -> tuple[Path, Path]:
    """A small filesystem of size[0] bytes holding a filler file of size[1] bytes (deleted to free room), and the
    path of a buffer on it."""
    root = small_fs(size[0])
    filler = root / "filler"
    filler.write_bytes(b"\0" * size[1])
    return root / "b.db", filler


@pytest.mark.parametrize("size", SIZES)
def test_full_disk_loses_nothing_and_saving_resumes(small_fs: Callable[[int], Path], size: tuple[int, int]) -> None:
    """Filled to ENOSPC: the failing save raises StorageFullError, everything saved before is there (ids and
    payloads, in order), saving works again once room is freed, and the file is sound."""
    path, filler = disk_with_filler(small_fs, size)
    saved: list[Message] = []
    with pbuffer.open(url(path)) as buf:
        fill(buf, 0, saved)
        assert len(saved) > 1000
        check_scenario(path, size[0])
        filler.unlink()  # room again
        saved.append(buf.save(numbered(-1), subject="disk.full"))
        saved.extend(buf.save_many([numbered(-2), numbered(-3)], subject="disk.full"))
        stored = read_all(buf)
        assert [m.id for m in stored] == [m.id for m in saved]
        assert [m.payload for m in stored] == [m.payload for m in saved]
    # Closing checkpointed the -wal into the main file, which may have filled the disk again: that is fine.
    assert integrity(path) == ["ok"]


@pytest.mark.parametrize("size", SIZES)
def test_full_disk_fails_every_call_cleanly_while_full(small_fs: Callable[[int], Path],
                                                      size: tuple[int, int]) -> None:
    """While the disk stays full: every save and save_many raises StorageFullError and stores nothing, reading
    works, a new buffer (a relay restarting) can open the file and read it, a delete either works or raises
    StorageFullError having removed nothing; after room is freed saving resumes and nothing was lost."""
    path, filler = disk_with_filler(small_fs, size)
    saved: list[Message] = []
    with pbuffer.open(url(path)) as buf:
        fill(buf, 0, saved)
        number = 10**6
        while True:  # the last few single messages that fit
            try:
                saved.append(buf.save(numbered(number), subject="disk.full"))
            except StorageFullError:
                break
            number += 1
        check_scenario(path, size[0])
        for attempt in range(20):
            with pytest.raises(StorageFullError):
                buf.save(numbered(2 * 10**6 + attempt), subject="disk.full")
            assert len(buf) == len(saved)
        for _ in range(3):
            with pytest.raises(StorageFullError):
                buf.save_many([numbered(3 * 10**6)] * 10, subject="disk.full")
        assert [m.payload for m in read_all(buf)] == [m.payload for m in saved]
        with pbuffer.open(url(path)) as other:
            assert [m.id for m in read_all(other)] == [m.id for m in saved]
        try:
            assert buf.delete_many([m.id for m in saved[:5]]) == 5
            del saved[:5]
        except StorageFullError:
            pass  # deletes are writes too: nothing was removed
        assert [m.id for m in read_all(buf)] == [m.id for m in saved]
        filler.unlink()
        for i in range(20):
            saved.append(buf.save(numbered(4 * 10**6 + i), subject="disk.full"))
        saved.extend(buf.save_many([numbered(5 * 10**6 + i) for i in range(10)], subject="disk.full"))
        assert [m.id for m in read_all(buf)] == [m.id for m in saved]
    assert integrity(path) == ["ok"]


# -------------------------------------------------------------------------------------- a truncated main file

@pytest.fixture(scope="module")
def sealed_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Message]]:
    """A closed buffer file (everything checkpointed into it) of 5,000 messages: about 220 pages."""
    path = tmp_path_factory.mktemp("sealed") / "b.db"
    with pbuffer.open(url(path)) as buf:
        saved = buf.save_many([numbered(i) for i in range(5000)], subject="trunc")
    assert not Path(f"{path}-wal").exists()
    return path, saved


@pytest.mark.parametrize("keep", [
    pytest.param(lambda size: 100, id="header-only"),
    pytest.param(lambda size: 4096, id="first-page"),
    pytest.param(lambda size: size // 2 // 4096 * 4096, id="half-at-a-page-boundary"),
    pytest.param(lambda size: size // 2 // 4096 * 4096 + 1234, id="half-mid-page"),
    pytest.param(lambda size: size - 4096, id="last-page-gone"),
])
def test_truncated_file_is_refused_at_open_untouched(tmp_path: Path, sealed_file: tuple[Path, list[Message]],
                                                     keep: Callable[[int], int]) -> None:
    source, _ = sealed_file
    data = source.read_bytes()
    path = tmp_path / "b.db"
    path.write_bytes(data[:keep(len(data))])
    before = snapshot(path)
    with pytest.raises(CorruptDatabaseError):
        pbuffer.open(url(path))
    assert snapshot(path) == before


def test_cut_inside_the_last_page_is_caught_per_message(tmp_path: Path,
                                                        sealed_file: tuple[Path, list[Message]]) -> None:
    """A cut that spares the b-tree but not a cell's bytes passes quick_check (sqlite reads the missing tail as
    zeros): the damaged message is caught by its checksum, `verify` names it, and after it is dead-lettered every
    other message reads intact. The recovery procedure, on the smallest damage."""
    source, saved = sealed_file
    path = tmp_path / "b.db"
    path.write_bytes(source.read_bytes()[:-1])
    report = verify(url(path))
    assert not report.ok and report.integrity == ["ok"]
    assert 1 <= len(report.damaged) <= 5 and set(report.damaged) <= {m.id for m in saved}
    assert report.pending == len(saved) - len(report.damaged)
    with pbuffer.open(url(path)) as buf:
        with pytest.raises(CorruptDatabaseError):
            read_all(buf)
        for message_id in report.damaged:
            assert buf.mark_dead(message_id, "damaged on disk")
        intact = [m for m in saved if m.id not in report.damaged]
        assert [(m.id, m.payload) for m in read_all(buf)] == [(m.id, m.payload) for m in intact]


def test_open_runs_quick_check_by_default(tmp_path: Path, sealed_file: tuple[Path, list[Message]]) -> None:
    """Damage inside a leaf page of the messages table: reading sqlite_master and the version works, so only
    quick_check finds it at open. Refused by default; integrity_check=False opens it (and reading then fails)."""
    source, _ = sealed_file
    data = bytearray(source.read_bytes())
    middle = len(data) // 4096 // 2 * 4096
    data[middle + 8: middle + 40] = b"\xa5" * 32  # the page's cell pointers
    path = tmp_path / "b.db"
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDatabaseError, match="quick_check"):
        pbuffer.open(url(path))
    with pbuffer.open(url(path), integrity_check=False) as buf, pytest.raises(CorruptDatabaseError):
        read_all(buf)


def test_undecodable_text_on_disk_is_corruption(tmp_path: Path) -> None:
    """A scrambled page can hand back any bytes as a subject; Python's sqlite3 then fails to decode it. That is
    damage (pbuffer writes only valid UTF-8), reported as CorruptDatabaseError without quoting the bytes."""
    path = tmp_path / "b.db"
    with pbuffer.open(url(path)) as buf:
        buf.save(b"secret payload", subject="a")
    conn = sqlite3.connect(path)
    conn.execute(f"UPDATE {MESSAGES} SET subject = CAST(X'ff736563726574' AS TEXT)")  # b"\xffsecret"
    conn.commit()
    conn.close()
    with pbuffer.open(url(path)) as buf:
        for read in (buf.get, buf.get_all, buf.pop):
            with pytest.raises(CorruptDatabaseError) as caught:
                read()
            assert "secret" not in str(caught.value)
        assert len(buf) == 1


@pytest.mark.parametrize("content", [
    pytest.param(b"SQLite for", id="cut-inside-the-magic"),
    pytest.param(b"\0" * 4096, id="zeros"),
    pytest.param(b"%PDF-1.7\n" + os.urandom(4000), id="another-format"),
])
def test_file_that_is_not_sqlite_is_refused_and_verify_says_so(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(content)
    with pytest.raises(NotABufferDatabaseError):
        pbuffer.open(url(path))
    report = verify(url(path))
    assert not report.ok and report.problems
    assert snapshot(path) == {"b.db": content}


# ------------------------------------------------------------------------------------------- a torn -wal

WRITER = """
import sys
import pbuffer

buf = pbuffer.open(sys.argv[1])
len(buf)  # its connection made, with whatever that connection writes
print("ready", flush=True)
sys.stdin.readline()
for i in range(int(sys.argv[2])):
    print(buf.save(b"commit %d" % i, subject="wal.cut").id, flush=True)
print("done", flush=True)
sys.stdin.readline()  # killed here, its frames still in the -wal
"""


def wal_frames(wal: bytes) -> tuple[int, list[tuple[int, bool]]]:
    """The page size and, for each frame of the current WAL generation, (offset of its end, is it a commit)."""
    if len(wal) < 32:
        return 0, []
    page_size, salts = struct.unpack(">I", wal[8:12])[0], wal[16:24]
    frames = []
    offset = 32
    while offset + 24 + page_size <= len(wal) and wal[offset + 8: offset + 16] == salts:
        commit_size = struct.unpack(">I", wal[offset + 4: offset + 8])[0]
        offset += 24 + page_size
        frames.append((offset, commit_size != 0))
    return page_size, frames


def test_torn_wal_keeps_every_whole_commit(tmp_path: Path) -> None:
    """A writer killed with its commits still in the -wal, then the -wal cut at many points (mid-header, mid-page,
    mid-commit-frame, on a boundary): every commit whose frames are all inside the cut is there, nothing after it,
    and the file is sound (with and without the writer's -shm)."""
    path = tmp_path / "b.db"
    pbuffer.open(url(path)).close()  # schema made and checkpointed: the writer starts a fresh -wal
    # About 300 frames: under the automatic checkpoint, so every commit stays in the -wal. A save is one commit
    # (sqlite folds its count of new rows in a commit of its own, but only every 1,024 saves).
    commits = 150
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url(path), str(commits)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline() == "ready\n"
        # Commits the open itself made, before the first save.
        wal_file = Path(f"{path}-wal")
        preamble = sum(commit for _, commit in wal_frames(wal_file.read_bytes() if wal_file.exists() else b"")[1])
        writer.stdin.write("go\n")
        writer.stdin.flush()
        ids = [writer.stdout.readline().strip() for _ in range(commits)]
        assert writer.stdout.readline() == "done\n"
    finally:
        writer.kill()
        writer.wait()
    main, wal, shm = (Path(f"{path}{suffix}").read_bytes() for suffix in ("", "-wal", "-shm"))
    page_size, frames = wal_frames(wal)
    commit_ends = [end for end, commit in frames if commit]
    assert len(commit_ends) == preamble + commits and frames[-1][0] == len(wal)

    cuts = {0, 10, 32, len(wal)}
    for index in (0, 1, 2, len(frames) // 3, len(frames) // 2, len(frames) - 3, len(frames) - 2):
        end = frames[index][0]
        cuts |= {end, end + 1, end + 23, end + 24 + page_size // 2, end + 24 + page_size - 1}
    for end in commit_ends[preamble:preamble + 3] + commit_ends[-2:]:
        cuts |= {end - 1, end - page_size // 2}  # inside a commit frame: that commit is torn
    checked = 0
    for cut in sorted(c for c in cuts if 0 <= c <= len(wal)):
        whole = sum(end <= cut for end in commit_ends)
        expected = ids[:max(0, whole - preamble)]
        for with_shm in (True, False):
            copy = tmp_path / f"cut-{cut}-{with_shm}" / "b.db"
            copy.parent.mkdir()
            copy.write_bytes(main)
            Path(f"{copy}-wal").write_bytes(wal[:cut])
            if with_shm:
                Path(f"{copy}-shm").write_bytes(shm)
            with pbuffer.open(url(copy)) as buf:
                found = read_all(buf)
            assert [m.id for m in found] == expected, (cut, whole, with_shm)
            assert [m.payload for m in found] == [b"commit %d" % i for i in range(len(expected))]
            assert integrity(copy) == ["ok"]
            checked += 1
    assert checked >= 60


def test_killed_writer_loses_no_commit(tmp_path: Path) -> None:
    """The uncut case of the test above, through the recovery tool: verify reads every commit of a writer killed
    with everything in its -wal."""
    path = tmp_path / "b.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url(path), "50"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        assert writer.stdout.readline() == "ready\n"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        ids = [writer.stdout.readline().strip() for _ in range(50)]
        assert writer.stdout.readline() == "done\n"
    finally:
        writer.kill()
        writer.wait()
    assert Path(f"{path}-wal").stat().st_size > 0
    report = verify(url(path))
    assert report.ok and report.pending == 50, report
    with pbuffer.open(url(path)) as buf:
        assert [m.id for m in read_all(buf)] == ids
