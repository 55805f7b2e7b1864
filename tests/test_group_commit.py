"""Group commit, in the async facade and across threads: concurrent saves share transactions, and each returns
only once its own message is durable."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pbuffer


def counting_commits(buf: pbuffer.Buffer) -> list[int]:
    sizes: list[int] = []
    original = buf._insert  # type: ignore[attr-defined]

    def insert(messages: list[pbuffer.Message]) -> None:
        original(messages)
        sizes.append(len(messages))

    buf._insert = insert  # type: ignore[attr-defined]
    return sizes


def test_concurrent_saves_are_committed_together(tmp_path: Path) -> None:
    async def scenario() -> None:
        raw = pbuffer.open(f"sqlite:///{tmp_path}/b.db", durability="power")
        sizes = counting_commits(raw)
        async with pbuffer.AsyncBuffer(raw) as buf:
            async def producer(n: int) -> list[str]:
                return [(await buf.save(f"{n}:{i}".encode(), subject=f"p.{n}")).id for i in range(20)]

            per_producer = await asyncio.gather(*(producer(n) for n in range(64)))
            stored = [m.id for m in await buf.get_all()]
        assert sorted(stored) == sorted(i for ids in per_producer for i in ids)
        for ids in per_producer:  # each producer's order is kept
            assert [i for i in stored if i in set(ids)] == ids
        assert sum(sizes) == 64 * 20
        assert len(sizes) < 64 * 20 / 4, f"saves were not grouped: {len(sizes)} commits"

    asyncio.run(scenario())


def test_a_failed_group_commit_fails_every_save_in_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        raw = pbuffer.open(f"sqlite:///{tmp_path}/b.db")
        async with pbuffer.AsyncBuffer(raw) as buf:
            await buf.save(b"before", subject="a")
            original = raw._insert  # type: ignore[attr-defined]

            def full(messages: list[pbuffer.Message]) -> None:
                raise pbuffer.StorageFullError("simulated: disk full")

            raw._insert = full  # type: ignore[attr-defined]
            results = await asyncio.gather(*(buf.save(b"x", subject="a") for _ in range(10)),
                                           return_exceptions=True)
            assert all(isinstance(r, pbuffer.StorageFullError) for r in results)
            raw._insert = original  # type: ignore[attr-defined]
            assert [m.payload for m in await buf.get_all()] == [b"before"]
            await buf.save(b"after", subject="a")  # room again: saving works
            assert await buf.count() == 2

    asyncio.run(scenario())


def test_bad_input_fails_only_its_own_save(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with pbuffer.AsyncBuffer(pbuffer.open(f"sqlite:///{tmp_path}/b.db")) as buf:
            results = await asyncio.gather(buf.save(b"ok", subject="a"), buf.save(b"bad", subject="a b"),
                                           buf.save(b"ok too", subject="a"), return_exceptions=True)
            assert isinstance(results[1], pbuffer.ValidationError)
            assert [m.payload for m in await buf.get_all()] == [b"ok", b"ok too"]

    asyncio.run(scenario())


def test_group_commit_can_be_turned_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        raw = pbuffer.open(f"sqlite:///{tmp_path}/b.db", group_commit=False)
        sizes = counting_commits(raw)
        async with pbuffer.AsyncBuffer(raw, group_commit=False) as buf:
            await asyncio.gather(*(buf.save(b"x", subject="a") for _ in range(20)))
        assert sizes == [1] * 20

    asyncio.run(scenario())


@pytest.mark.parametrize("url", ["memory://"])
def test_non_blocking_backends_commit_inline(url: str) -> None:
    async def scenario() -> None:
        async with pbuffer.AsyncBuffer(pbuffer.open(url)) as buf:
            assert buf.group_commit is False
            await buf.save(b"x", subject="a")
            assert await buf.count() == 1

    asyncio.run(scenario())


def save_from_threads(buf: pbuffer.Buffer, threads: int, each: int) -> tuple[list[list[str]], list[BaseException]]:
    saved: list[list[str]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def producer(n: int) -> None:
        start.wait()
        for i in range(each):
            try:
                saved[n].append(buf.save(f"{n}:{i}".encode(), subject=f"p.{n}").id)
            except BaseException as exc:
                errors.append(exc)

    workers = [threading.Thread(target=producer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    return saved, errors


def test_saves_from_threads_are_committed_together(tmp_path: Path) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db", durability="power") as buf:
        sizes = counting_commits(buf)
        per_thread, errors = save_from_threads(buf, 16, 40)
        assert errors == []
        stored = [m.id for m in buf.get_all()]
    assert sorted(stored) == sorted(i for ids in per_thread for i in ids)
    for ids in per_thread:  # each thread's order is kept
        assert [i for i in stored if i in set(ids)] == ids
    assert sum(sizes) == 16 * 40
    assert len(sizes) < 16 * 40 / 2, f"saves were not grouped: {len(sizes)} commits"


def test_a_failed_thread_group_commit_fails_every_save_in_it(tmp_path: Path) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db", group_commit=True) as buf:
        buf.save(b"before", subject="a")
        original = buf._insert  # type: ignore[attr-defined]
        entered = threading.Event()

        def full(messages: list[pbuffer.Message]) -> None:
            entered.set()
            raise pbuffer.StorageFullError("simulated: disk full")

        buf._insert = full  # type: ignore[attr-defined]
        _, errors = save_from_threads(buf, 8, 5)
        assert entered.is_set() and len(errors) == 40
        assert all(isinstance(e, pbuffer.StorageFullError) for e in errors)
        buf._insert = original  # type: ignore[attr-defined]
        assert [m.payload for m in buf.get_all()] == [b"before"]
        buf.save(b"after", subject="a")  # room again: saving works
        assert len(buf) == 2


def test_a_full_buffer_answers_each_grouped_save_on_its_own(tmp_path: Path) -> None:
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db", max_messages=25, group_commit=True) as buf:
        per_thread, errors = save_from_threads(buf, 10, 5)
        assert len(errors) == 25 and all(isinstance(e, pbuffer.BufferFullError) for e in errors)
        assert sum(len(ids) for ids in per_thread) == 25 == len(buf)


def test_a_full_buffer_answers_each_grouped_async_save_on_its_own(tmp_path: Path) -> None:
    """A group of concurrent async saves that does not fit under max_messages is committed save by save: as many
    fit as there is room for, each of the others raises BufferFullError, none is lost or stored twice."""

    async def scenario() -> None:
        raw = pbuffer.open(f"sqlite:///{tmp_path}/b.db", max_messages=25)
        tried: list[int] = []  # the size of every commit tried, refused ones included
        original = raw._insert  # type: ignore[attr-defined]

        def insert(messages: list[pbuffer.Message]) -> None:
            tried.append(len(messages))
            original(messages)

        raw._insert = insert  # type: ignore[attr-defined]
        async with pbuffer.AsyncBuffer(raw) as buf:
            results = await asyncio.gather(*(buf.save(f"{n}".encode(), subject="s.a") for n in range(60)),
                                           return_exceptions=True)
            stored = [m.id for m in await buf.get_all()]
        saved = [r.id for r in results if isinstance(r, pbuffer.Message)]
        refused = [r for r in results if not isinstance(r, pbuffer.Message)]
        assert len(saved) == 25 and sorted(saved) == sorted(stored)
        assert len(refused) == 35 and all(isinstance(e, pbuffer.BufferFullError) for e in refused)
        assert max(tried) > 1, "no group was tried together: the save-by-save fallback was not exercised"

    asyncio.run(scenario())


@pytest.mark.parametrize(("options", "grouped"), [
    ({}, True), ({"durability": "power"}, True), ({"group_commit": False}, False),
    ({"durability": "power", "group_commit": False}, False)])
def test_threads_group_commits_by_default_unless_turned_off(tmp_path: Path, options: dict[str, object],
                                                            grouped: bool) -> None:
    """Threads' saves are grouped by default, at either durability (with "process", a transaction of many rows
    costs little more than one of a single row; with "power", they share its fsync), unless turned off."""
    with pbuffer.open(f"sqlite:///{tmp_path}/b.db", **options) as buf:  # type: ignore[arg-type]
        assert buf.group_commit is grouped
        sizes = counting_commits(buf)
        _, errors = save_from_threads(buf, 8, 20)
        assert not errors and sum(sizes) == 160 == len(buf)
        if not grouped:
            assert max(sizes) == 1, "saves were grouped although group commit is off"


def _stress_group_commit(combine_for: float, threads: int = 12, calls: int = 150) -> None:
    """GroupCommit alone, over a fake insert that fails some transactions (every call in them), refuses some
    groups as over the limits (then each call alone, some of which fail) and blocks a little now and then: every
    call returns or raises (none hangs), a call that returns was written exactly once, a call that raises was not
    written at all, and every grouped call got its own answer."""
    import random
    import time

    from pbuffer.buffering.group_commit import GroupCommit

    written: list[str] = []
    write_lock = threading.Lock()
    chance = random.Random(7)
    chance_lock = threading.Lock()

    calls_per_commit: list[int] = []

    def insert(messages: list[str]) -> None:
        calls_per_commit.append(len({m.rsplit(":", 1)[0] for m in messages}))
        with chance_lock:
            roll = chance.random()
        if roll < 0.03:
            time.sleep(0.0005)  # a slow commit: more calls queue behind it (no assertion depends on timing)
        if len({m.rsplit(":", 1)[0] for m in messages}) > 1 and roll < 0.15:  # several calls' messages
            raise pbuffer.BufferFullError("simulated: the group does not fit")
        if any(m.split(":")[1] == "7" for m in messages) or roll > 0.93:  # call 7 of each thread always fails
            raise pbuffer.StorageFullError("simulated: disk full")
        with write_lock:
            written.extend(messages)

    grouped = GroupCommit(insert, combine_for=combine_for)  # type: ignore[arg-type]
    returned: list[list[str]] = [[] for _ in range(threads)]
    raised: list[list[str]] = [[] for _ in range(threads)]
    unexpected: list[BaseException] = []
    start = threading.Barrier(threads)

    def producer(n: int) -> None:
        start.wait()
        for i in range(calls):
            messages = [f"{n}:{i}:{j}" for j in range(1 + i % 3)]
            try:
                grouped.commit(messages)  # type: ignore[arg-type]
            except pbuffer.StorageFullError:
                raised[n].extend(messages)
            except BaseException as exc:
                unexpected.append(exc)
            else:
                returned[n].extend(messages)

    workers = [threading.Thread(target=producer, args=(n,), daemon=True) for n in range(threads)]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 120  # a generous bound on a hang, not a timing assertion
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
    assert not any(worker.is_alive() for worker in workers), "a call never got its answer (lost wake-up)"
    assert unexpected == []
    assert sorted(written) == sorted(m for messages in returned for m in messages), "written != returned"
    assert not set(written) & {m for messages in raised for m in messages}, "a call that raised was written"
    assert sum(map(len, returned)) + sum(map(len, raised)) == threads * sum(1 + i % 3 for i in range(calls))
    assert not any(m.split(":")[1] == "7" for messages in returned for m in messages)
    assert max(calls_per_commit) > 1, "no transaction held several calls: nothing was grouped"


@pytest.mark.parametrize("combine_for", [0.0, 0.001, 60.0])
def test_many_threads_with_failing_commits_each_get_their_own_answer(combine_for: float) -> None:
    """combine_for 0: the committing is handed over after every transaction (a woken call leads each time); 60 s:
    one thread commits for all of them while they keep coming."""
    _stress_group_commit(combine_for)


def committing_one(grouped: Any, outcomes: dict[str, object]) -> Callable[[str], None]:
    """A thread's target: commit one call named ``name`` through ``grouped``; its outcome goes to ``outcomes``
    (``"stored"`` or what it raised)."""

    def call(name: str) -> None:
        try:
            grouped.commit([name])
        except BaseException as exc:
            outcomes[name] = exc
        else:
            outcomes[name] = "stored"

    return call


def behind_a_running_commit(grouped: Any, first_running: threading.Event, go_on: threading.Event,
                            call: Callable[[str], None], later: list[Callable[[], None]]) -> None:
    """Commit "first" (its insert sets ``first_running`` and waits for ``go_on``), queue the ``later`` calls behind
    it, one thread each, let it go on and wait for every thread."""
    leader = threading.Thread(target=call, args=("first",))
    leader.start()
    assert first_running.wait(10)
    threads = [threading.Thread(target=target) for target in later]
    for thread in threads:
        thread.start()
    while len(grouped._queue) < len(later):  # all of them wait behind the first, to be written together
        threading.Event().wait(0.001)
    go_on.set()
    for thread in (leader, *threads):
        thread.join(10)


def test_a_call_interrupted_while_it_waits_leaves_no_other_call_waiting() -> None:
    """A KeyboardInterrupt (Ctrl-C, in the main thread) while a call waits for the commit running: that call
    leaves the queue having written nothing, and the calls behind it are still committed, even when it was the
    one chosen to commit next (here: the running commit ends by a BaseException, which hands the committing over
    to the oldest queued call)."""
    from pbuffer.buffering import group_commit
    from pbuffer.buffering.group_commit import GroupCommit

    class Stop(BaseException):
        pass

    written: list[str] = []
    entered, finish = threading.Event(), threading.Event()

    def insert(messages: list[str]) -> None:
        if messages == ["first"]:
            entered.set()
            finish.wait()
            raise Stop
        written.extend(messages)

    grouped = GroupCommit(insert)  # type: ignore[arg-type]
    outcomes: dict[str, object] = {}
    call = committing_one(grouped, outcomes)

    first = threading.Thread(target=call, args=("first",), daemon=True)
    first.start()
    entered.wait()

    class InterruptedLock:
        """The lock a waiting call blocks on; the interrupted call's acquire raises as Ctrl-C would."""

        def __init__(self, interrupt: bool) -> None:
            self._lock = threading.Lock()
            self._interrupt = interrupt

        def acquire(self, blocking: bool = True) -> bool:
            if self._interrupt and self._lock.locked():
                self._interrupt = False
                # The second call queues behind this one before the interrupt lands.
                second.start()
                while len(grouped._queue) < 2:
                    threading.Event().wait(0.001)
                raise KeyboardInterrupt
            return self._lock.acquire(blocking)

        def release(self) -> None:
            self._lock.release()

    made: list[InterruptedLock] = []

    def allocate_lock() -> InterruptedLock:
        made.append(InterruptedLock(interrupt=not made))
        return made[-1]

    second = threading.Thread(target=call, args=("second",), daemon=True)
    original = group_commit.allocate_lock
    group_commit.allocate_lock = allocate_lock  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            grouped.commit(["interrupted"])  # type: ignore[list-item]
    finally:
        group_commit.allocate_lock = original
    finish.set()
    first.join(60)
    second.join(60)
    assert not second.is_alive(), "the call queued behind the interrupted one was never committed"
    assert isinstance(outcomes["first"], Stop) and outcomes["second"] == "stored"
    assert written == ["second"]
    grouped.commit(["after"])  # type: ignore[list-item]  # nobody is left committing: a new call commits at once
    assert written == ["second", "after"]


def test_an_interrupt_right_after_a_call_took_the_committing_leaves_it_free() -> None:
    """A KeyboardInterrupt that lands as a lone call leaves the lock it took the committing under (before its
    insert) must hand the committing back: it stayed taken with no thread committing, and every later save waited
    for ever (found with real signals: after 756 interrupted saves)."""
    from pbuffer.buffering.group_commit import GroupCommit

    written: list[str] = []
    grouped = GroupCommit(written.extend)  # type: ignore[arg-type]

    class InterruptedOnExit:
        """The group's lock; leaving it the first time raises as a Ctrl-C arriving right then would."""

        def __init__(self) -> None:
            self._lock = threading.Lock()
            self.interrupt = True

        def __enter__(self) -> None:
            self._lock.acquire()

        def __exit__(self, *exc_info: object) -> None:
            self._lock.release()
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt

    grouped._lock = InterruptedOnExit()  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        grouped.commit(["interrupted"])  # type: ignore[list-item]
    done = threading.Event()
    thread = threading.Thread(target=lambda: (grouped.commit(["next"]), done.set()), daemon=True)  # type: ignore[list-item]
    thread.start()
    assert done.wait(10), "the next save waits for a commit nobody runs"
    assert written == ["next"]


def test_an_interrupt_of_the_committing_thread_reaches_no_other_thread() -> None:
    """The thread committing other threads' calls is interrupted (Ctrl-C lands in the main thread) while it writes
    them: each of those calls gets an error of its own saying the outcome is unknown, not the KeyboardInterrupt
    (raised in a worker thread it ended that thread), and the next call is committed (nobody waits for ever)."""
    from pbuffer.buffering.group_commit import GroupCommit

    written: list[str] = []
    first_running, go_on = threading.Event(), threading.Event()

    def insert(messages: list[str]) -> None:
        if messages == ["first"]:
            first_running.set()
            go_on.wait(10)
        elif messages == ["second"]:
            raise KeyboardInterrupt
        written.extend(messages)

    grouped = GroupCommit(insert)  # type: ignore[arg-type]
    outcomes: dict[str, object] = {}
    call = committing_one(grouped, outcomes)
    behind_a_running_commit(grouped, first_running, go_on, call, [lambda: call("second")])
    assert isinstance(outcomes["first"], KeyboardInterrupt)  # the interrupted thread's own
    assert isinstance(outcomes["second"], pbuffer.BackendError) and "interrupted" in str(outcomes["second"])
    last = threading.Thread(target=call, args=("third",))
    last.start()
    last.join(10)
    assert outcomes.get("third") == "stored" and written == ["first", "third"]


def test_a_message_committed_twice_fails_only_its_own_call_in_a_group() -> None:
    """A call committing a message already stored (prepare(), commit() retried) shares a transaction with other
    threads' calls: it gets its ValidationError, and the others are committed (they failed with it)."""
    from pbuffer.buffering.group_commit import GroupCommit

    stored: list[str] = []
    first_running, go_on = threading.Event(), threading.Event()

    def insert(messages: list[str]) -> None:
        if messages == ["first"]:
            first_running.set()
            go_on.wait(10)
        if len(set(messages) | set(stored)) < len(messages) + len(stored):
            raise pbuffer.ValidationError("save: a message with this id is already in the buffer")
        stored.extend(messages)

    grouped = GroupCommit(insert)  # type: ignore[arg-type]
    outcomes: dict[str, object] = {}
    call = committing_one(grouped, outcomes)
    again: dict[str, object] = {}  # the same message committed again: its own outcome
    behind_a_running_commit(grouped, first_running, go_on, call,
                            [lambda: call("second"), lambda: committing_one(grouped, again)("first"),
                             lambda: call("third")])
    assert outcomes == {"first": "stored", "second": "stored", "third": "stored"}
    assert len(again) == 1 and isinstance(again["first"], pbuffer.ValidationError)
    assert sorted(stored) == ["first", "second", "third"]
