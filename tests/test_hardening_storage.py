"""Hardening of the sqlite storage layer: saves racing close(), the one-writer lock's timeout, symlinked paths,
busy_timeout values, one AsyncBuffer on two event loops, and permission problems named as such."""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import pbuffer
from pbuffer.schema.recovery import quarantine

# Rounds of the close race: each round closes at a different moment of the savers' work.
_RACE_ROUNDS = 8
_RACE_THREADS = 8


def _race_one_round(url: str, *, group_commit: bool, serialize_writes: bool, seed: int) -> None:
    buf = pbuffer.open(url, group_commit=group_commit, serialize_writes=serialize_writes)
    returned: list[bytes] = []
    raised: list[bytes] = []
    unexpected: list[BaseException] = []
    start = threading.Barrier(_RACE_THREADS + 1)

    def saver(n: int) -> None:
        start.wait()
        for i in range(100_000):
            payload = f"{n}:{i}".encode()
            try:
                buf.save(payload, subject="race")
            except pbuffer.PBufferError as exc:
                raised.append(payload)
                if not (isinstance(exc, pbuffer.BackendError) and "closed" in str(exc)):
                    unexpected.append(exc)
                if buf.closed:
                    return
            except BaseException as exc:  # a raw OSError (or anything untyped) is the bug
                unexpected.append(exc)
                return
            else:
                returned.append(payload)

    threads = [threading.Thread(target=saver, args=(n,), daemon=True) for n in range(_RACE_THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(random.Random(seed).uniform(0.005, 0.08))
    buf.close()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a saver hung after close()"
    assert not unexpected, f"untyped errors from save() racing close(): {unexpected[:3]!r}"
    with pbuffer.open(url) as reopened:
        stored = [m.payload for m in reopened.get_all()]
    assert len(stored) == len(set(stored))
    committed_but_raised = set(raised) & set(stored)
    assert not committed_but_raised, f"{len(committed_but_raised)} save(s) raised although committed"
    assert sorted(stored) == sorted(returned), "a save that returned is missing"


@pytest.mark.parametrize(("group_commit", "serialize_writes"), [(True, True), (False, True), (True, False)],
                         ids=["group-commit", "no-group-commit", "no-write-lock"])
def test_save_racing_close_commits_or_writes_nothing(tmp_path: Path, group_commit: bool,
                                                     serialize_writes: bool) -> None:
    for round_ in range(_RACE_ROUNDS):
        _race_one_round(f"sqlite:///{tmp_path}/race{round_}.db", group_commit=group_commit,
                        serialize_writes=serialize_writes, seed=round_)


# ------------------------------------------------------------------------------ the one-writer lock's timeout

_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def _lock_held_by_another_process(lock_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the one-writer lock's flock (as a saver stopped mid-transaction would)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait(30)


def _bounded(fn: Callable[[], object], bound: float = 30.0) -> BaseException | None:
    """Run ``fn`` in a thread; the exception it raised, or None. Fails (instead of hanging) past ``bound``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still blocked after {bound} s"
    return outcome[0]


def test_write_lock_held_by_another_process_times_out_with_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url, serialize_writes=True) as buf:
        kept = buf.save(b"before", subject="a")
    buf = pbuffer.open(url, serialize_writes=True, busy_timeout=0.3)
    try:
        with _lock_held_by_another_process(tmp_path / "b.db.lock"):
            error = _bounded(lambda: buf.save(b"blocked", subject="a"))
            assert isinstance(error, pbuffer.BackendError), repr(error)
            assert "b.db.lock" in str(error) and "busy_timeout" in str(error)
            # Opening meets the same lock (the schema check is a write transaction) and fails the same way.
            error = _bounded(lambda: pbuffer.open(url, serialize_writes=True, busy_timeout=0.3).close())
            assert isinstance(error, pbuffer.BackendError) and "b.db.lock" in str(error), repr(error)
        buf.save(b"after", subject="a")  # the holder is gone: writing works again
        assert [m.payload for m in buf.get_all()] == [b"before", b"after"]
        assert buf.get_all()[0].id == kept.id
    finally:
        buf.close()


def test_write_lock_wait_for_a_stopped_saver_is_bounded(tmp_path: Path) -> None:
    """A saver process stopped (SIGSTOP) while it holds the write lock: another process's save gives up."""
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url, serialize_writes=True) as buf:
        buf.save(b"before", subject="a")
    saver = subprocess.Popen([sys.executable, "-c", _SAVE_FOREVER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert saver.stdout is not None and saver.stdout.readline().strip() == "saving"
        lock_file = tmp_path / "b.db.lock"
        # Stop it at a moment it holds the lock: stop, look (flock from here fails), resume until it does.
        for _ in range(1000):
            os.kill(saver.pid, signal.SIGSTOP)
            if _held_elsewhere(lock_file):
                break
            os.kill(saver.pid, signal.SIGCONT)
            time.sleep(0.001)
        else:
            pytest.fail("never caught the saver holding the lock")
        # Opening already needs the lock (the schema check is a write transaction).
        error = _bounded(lambda: pbuffer.open(url, serialize_writes=True, busy_timeout=0.3).close())
        assert isinstance(error, pbuffer.BackendError) and "b.db.lock" in str(error), repr(error)
    finally:
        saver.kill()
        saver.wait(30)
    with pbuffer.open(url) as buf:
        assert buf.get_all()[0].payload == b"before"


_SAVE_FOREVER = """
import sys
import pbuffer
buf = pbuffer.open(sys.argv[1], serialize_writes=True)
print("saving", flush=True)
while True:
    buf.save(b"x" * 100, subject="a")
"""


def _held_elsewhere(lock_file: Path) -> bool:
    fd = os.open(lock_file, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


# ------------------------------------------------------------------------------------------------- symlinks

def test_symlink_and_real_path_share_one_write_lock(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "b.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with pbuffer.open(f"sqlite:///{real}", serialize_writes=True) as buf:
        buf.save(b"one", subject="a")
    with _lock_held_by_another_process(real_dir / "b.db.lock"):
        # Through the link, the same lock: held by the other process, so this writer waits (and gives up).
        error = _bounded(lambda: pbuffer.open(f"sqlite:///{link}", serialize_writes=True, busy_timeout=0.3).close())
        assert isinstance(error, pbuffer.BackendError) and "b.db.lock" in str(error), repr(error)
    with pbuffer.open(f"sqlite:///{link}", serialize_writes=True) as through_link, \
            pbuffer.open(f"sqlite:///{real}", serialize_writes=True) as direct:
        through_link.save(b"two", subject="a")
        assert [m.payload for m in direct.get_all()] == [b"one", b"two"]
    assert not (tmp_path / "link.db.lock").exists()
    assert link.is_symlink()


def test_quarantine_through_a_symlink_moves_the_real_file(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    real = real_dir / "b.db"
    link = tmp_path / "link.db"
    link.symlink_to(real)
    with pbuffer.open(f"sqlite:///{real}") as buf:
        buf.save(b"kept", subject="a")
    moved = quarantine(f"sqlite:///{link}")
    assert [old for old, _ in moved] == [real]
    assert link.is_symlink() and not real.exists()
    target = moved[0][1]
    assert target.parent == real_dir and not target.is_symlink()
    with pbuffer.open(f"sqlite:///{target}") as buf:
        assert [m.payload for m in buf.get_all()] == [b"kept"]


# ----------------------------------------------------------------------------------- busy_timeout, pool_size

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e300, 10**30, -1, 2**31])
def test_bad_busy_timeout_is_a_configuration_error(tmp_path: Path, value: float) -> None:
    with pytest.raises(pbuffer.ConfigurationError, match="busy_timeout"):
        pbuffer.open(f"sqlite:///{tmp_path}/b.db", busy_timeout=value)


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e300", "NaN"])
def test_bad_busy_timeout_in_the_url_is_a_configuration_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(pbuffer.ConfigurationError, match="busy_timeout"):
        pbuffer.open(f"sqlite:///{tmp_path}/b.db?busy_timeout={text}")


def test_largest_busy_timeout_is_accepted(tmp_path: Path) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db", busy_timeout=2_147_483, serialize_writes=True) as buf:
        buf.save(b"x", subject="a")
        assert len(buf) == 1


@pytest.mark.parametrize("value", [0, -1, 10**12, 2**64])
def test_bad_pool_size_is_a_configuration_error(tmp_path: Path, value: int) -> None:
    with pytest.raises(pbuffer.ConfigurationError, match="pool_size"):
        pbuffer.open(f"sqlite:///{tmp_path}/b.db", pool_size=value)


# ------------------------------------------------------------------------------- one AsyncBuffer, two loops

def test_one_async_buffer_from_two_event_loops(tmp_path: Path) -> None:
    raw = pbuffer.open(f"sqlite:///{tmp_path}/b.db")
    abuf = pbuffer.AsyncBuffer(raw)
    per_loop = 200
    results: dict[int, object] = {}
    start = threading.Barrier(2)

    def loop_thread(n: int) -> None:
        async def produce() -> list[str]:
            async def one(i: int) -> str:
                return (await abuf.save(f"{n}:{i}".encode(), subject=f"loop.{n}")).id

            return list(await asyncio.gather(*(one(i) for i in range(per_loop))))

        async def bounded() -> list[str]:
            return await asyncio.wait_for(produce(), 30)

        start.wait()
        try:
            results[n] = asyncio.run(bounded())
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=loop_thread, args=(n,), daemon=True) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "an event loop hung"
    try:
        for n in range(2):
            assert isinstance(results[n], list), f"loop {n}: {results[n]!r}"
        stored = {m.id for m in raw.get_all()}
        assert len(stored) == 2 * per_loop
        assert stored == {i for n in range(2) for i in results[n]}  # type: ignore[attr-defined]
    finally:
        asyncio.run(abuf.close())


# ------------------------------------------------------------------------------------------------ permissions
# Root ignores file modes, so the opener runs in a process that drops to an unprivileged user (65534, "nobody")
# after importing everything while still root (the interpreter's own files may be unreadable to that user). The
# files under test are given to that user and their modes taken away, so its owner bits are what is tested.

_UNPRIVILEGED = r"""
import json, os, shutil, sys, tempfile
from pathlib import Path

from click.testing import CliRunner

import pbuffer
from pbuffer.cli import main as cli
from pbuffer.schema.recovery import verify

scratch = Path(tempfile.mkdtemp())
warm = f"sqlite:///{scratch}/warm.db"
with pbuffer.open(warm, serialize_writes=True) as buf:
    buf.save(b"x", subject="a")
verify(warm)
CliRunner().invoke(cli, ["db", "verify", "--url", warm])
for bad in (f"sqlite:///{scratch}", f"sqlite:///{scratch}/warm.db/x"):
    try:
        pbuffer.open(bad).close()
    except Exception:
        pass
shutil.rmtree(scratch)

uid, action, url, options = int(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
if uid >= 0:
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    except OSError as exc:
        print(json.dumps({"cannot_drop": str(exc)}))
        sys.exit(0)
result = {}
try:
    if action == "open":
        pbuffer.open(url, **options).close()
    elif action == "verify":
        result["ok"] = verify(url).ok
    elif action == "inspect":
        from pbuffer.backends.sqlite_file import inspect_existing_file
        inspect_existing_file(Path(url.removeprefix("sqlite:///")), True)
    else:
        run = CliRunner().invoke(cli, ["db", "verify", "--url", url])
        result.update(exit_code=run.exit_code, output=run.output)
except BaseException as exc:
    result.update(type=type(exc).__name__, typed=isinstance(exc, pbuffer.PBufferError), message=str(exc))
print(json.dumps(result))
"""
_NOBODY = 65534


def _as_unprivileged(action: str, url: str, **options: object) -> dict[str, object]:
    """Run ``action`` (open, verify, cli-verify, inspect) on ``url`` as an unprivileged user; what happened."""
    uid = _NOBODY if os.geteuid() == 0 else -1  # not root: file modes apply already
    run = subprocess.run([sys.executable, "-c", _UNPRIVILEGED, str(uid), action, url, json.dumps(options)],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    result: dict[str, object] = json.loads(run.stdout.strip().splitlines()[-1])
    if "cannot_drop" in result:
        reason = f"cannot drop root privileges to test permissions: {result['cannot_drop']}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    return result


@pytest.fixture
def perm_dir() -> Iterator[Path]:
    """A directory the unprivileged user owns, outside root's private temporary directories."""
    base = Path(tempfile.mkdtemp(prefix="pbuffer-perm-"))
    _give(base)
    try:
        yield base
    finally:
        for path in [base, *base.rglob("*")]:
            if not path.is_symlink():
                path.chmod(0o700)
        shutil.rmtree(base)


def _give(*paths: Path) -> None:
    """Make the unprivileged user the owner (when we are root; otherwise we already are)."""
    if os.geteuid() == 0:
        for path in paths:
            os.chown(path, _NOBODY, _NOBODY)


def _healthy_buffer(directory: Path) -> tuple[str, bytes]:
    directory.mkdir(exist_ok=True)
    url = f"sqlite:///{directory}/b.db"
    with pbuffer.open(url, serialize_writes=True) as buf:
        buf.save(b"kept", subject="a")
    _give(directory, *directory.iterdir())
    return url, (directory / "b.db").read_bytes()


def _assert_permission_error(result: dict[str, object], names: Path, permission: str) -> str:
    assert result.get("type") == "StoragePermissionError", result
    message = str(result["message"])
    assert str(names) in message and "permission denied" in message and permission in message, message
    assert "damaged" not in message and "quarantine" not in message, message
    return message


def test_healthy_buffer_in_a_read_only_directory_is_a_permission_error(perm_dir: Path) -> None:
    directory = perm_dir / "ro"
    url, before = _healthy_buffer(directory)
    directory.chmod(0o500)
    _assert_permission_error(_as_unprivileged("open", url), directory, "write")
    _assert_permission_error(_as_unprivileged("verify", url), directory, "write")
    cli = _as_unprivileged("cli-verify", url)
    assert cli["exit_code"] == 1, cli
    assert "permission denied" in str(cli["output"]) and "NOT OK" not in str(cli["output"]), cli
    # The open-time check alone (sqlite cannot make the -shm file it needs to check): not called damage either.
    inspected = _as_unprivileged("inspect", url)
    assert inspected.get("type") == "BackendError" and "not damage" in str(inspected["message"]), inspected
    directory.chmod(0o700)
    assert (directory / "b.db").read_bytes() == before
    with pbuffer.open(url) as buf:
        assert [m.payload for m in buf.get_all()] == [b"kept"]


def test_unreadable_buffer_file_is_a_permission_error(perm_dir: Path) -> None:
    url, before = _healthy_buffer(perm_dir / "d")
    file = perm_dir / "d" / "b.db"
    file.chmod(0o000)
    _assert_permission_error(_as_unprivileged("open", url), file, "read and write")
    file.chmod(0o600)
    assert file.read_bytes() == before


def test_new_buffer_in_a_read_only_directory_is_a_permission_error(perm_dir: Path) -> None:
    directory = perm_dir / "ro"
    directory.mkdir()
    _give(directory)
    directory.chmod(0o500)
    _assert_permission_error(_as_unprivileged("open", f"sqlite:///{directory}/new.db"), directory, "write")
    _assert_permission_error(_as_unprivileged("open", f"sqlite:///{directory}/sub/new.db"), directory, "write")
    assert list(directory.iterdir()) == []


def test_unwritable_lock_file_is_a_permission_error(perm_dir: Path) -> None:
    url, _ = _healthy_buffer(perm_dir / "d")
    lock_file = perm_dir / "d" / "b.db.lock"
    lock_file.chmod(0o400)
    _assert_permission_error(_as_unprivileged("open", url, serialize_writes=True), lock_file, "read and write")


def test_directory_as_the_buffer_path_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(pbuffer.ConfigurationError, match="is a directory"):
        pbuffer.open(f"sqlite:///{tmp_path}/dir.db")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(pbuffer.ConfigurationError, match="is not a directory"):
        pbuffer.open(f"sqlite:///{tmp_path}/file/b.db")


def test_wait_for_messages_wakes_every_event_loop(tmp_path: Path) -> None:
    raw = pbuffer.open(f"sqlite:///{tmp_path}/b.db")
    abuf = pbuffer.AsyncBuffer(raw)
    woke: dict[int, object] = {}
    waiting = threading.Barrier(3)

    def loop_thread(n: int) -> None:
        async def wait() -> bool:
            # Both loops have their listener before the save (the first look finds the buffer empty).
            waiter = asyncio.ensure_future(abuf.wait_for_messages(timeout=20))
            await asyncio.sleep(0.2)
            await asyncio.get_running_loop().run_in_executor(None, waiting.wait)
            return await waiter

        try:
            woke[n] = asyncio.run(wait())
        except BaseException as exc:
            woke[n] = exc

    threads = [threading.Thread(target=loop_thread, args=(n,), daemon=True) for n in range(2)]
    for thread in threads:
        thread.start()
    waiting.wait(30)
    raw.save(b"wake up", subject="a")
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "an event loop hung"
    try:
        assert woke == {0: True, 1: True}, "a loop was not woken by the save"
    finally:
        asyncio.run(abuf.close())


def test_mariadb_refuses_what_max_allowed_packet_cannot_take() -> None:
    """MariaDB's default max_allowed_packet (16 MiB) failed payloads from 8 MiB ("packet bigger than
    'max_allowed_packet'", then "server has gone away" from 12 MiB): the driver sends a payload escaped inside the
    statement, up to twice its size. pbuffer refuses such a message at save, naming the setting."""
    import sqlalchemy as sa
    from backend_urls import MYSQL

    url = MYSQL.empty()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        packet = int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar_one())
    engine.dispose()
    largest = (packet - 64 * 1024) // 2
    with pbuffer.open(url, auto_upgrade=True) as buf:
        # Zero bytes are escaped to two bytes each: the worst case, and it fits.
        fits = buf.save(b"\x00" * largest, subject="big.a")
        for payload, headers in ((b"\x00" * (largest + 1), None), (b"x" * (largest - 9), {"Big": "v" * 10}),
                                 (b"x" * (12 * 1024 * 1024), None)):
            with pytest.raises(pbuffer.ValidationError, match="max_allowed_packet") as raised:
                buf.save(payload, subject="big.a", headers=headers)
            assert f"{packet:,}" in str(raised.value)
            with pytest.raises(pbuffer.ValidationError, match="max_allowed_packet"):
                buf.save_many([b"small", payload], subject="big.a", headers=headers)  # all or nothing
        (stored,) = buf.get_all()
        assert stored.id == fits.id and stored.payload == b"\x00" * largest
