"""The memory backend's queue order under reads that start behind a message (``after=``), claims and removals
anywhere, with its dead-entry bookkeeping (head, skip runs, compaction) forced to run often; and the id generator's
batched random tails (well formed, never shared with a forked child)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from pbuffer.backends import memory

import pbuffer
from pbuffer import Message, ids

_UUID7 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_SUBJECTS = st.sampled_from(["a", "b"])
_OWNERS = [str(uuid.UUID(int=n, version=4)) for n in (1, 2)]


@pytest.fixture
def compact_often(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no slack, a lane is rebuilt as soon as its dead entries outnumber the live ones.
    monkeypatch.setattr(memory, "_COMPACT_SLACK", 0)


class _LaneMachine(RuleBasedStateMachine):
    """A shared named store, one unscoped buffer and one scoped to "a", against a list of pending messages."""

    def __init__(self) -> None:
        super().__init__()
        self.name = f"lanes-{uuid.uuid4()}"
        self.buffer = pbuffer.open(f"memory://{self.name}")
        self.view = pbuffer.open(f"memory://{self.name}", subject="a")
        self.pending: list[Message] = []
        self.dead: list[Message] = []
        self.gone: list[str] = []  # ids no longer pending: an after= that names one reads from the head

    def teardown(self) -> None:
        self.buffer.close()
        self.view.close()
        memory._named_stores.pop(self.name, None)

    def _some(self, data: st.DataObject, pool: list[str]) -> str | None:
        return data.draw(st.none() | st.sampled_from(pool)) if pool else None

    def _expected(self, subject: str | None, limit: int | None, after: str | None) -> list[str]:
        ids_in_order = [m.id for m in self.pending]
        start = ids_in_order.index(after) + 1 if after in ids_in_order else 0
        found = [m.id for m in self.pending[start:] if subject in (None, m.subject)]
        return found if limit is None else found[:limit]

    @rule(subject=_SUBJECTS, count=st.integers(1, 4))
    def save(self, subject: str, count: int) -> None:
        self.pending.extend(self.buffer.save_many([b"x"] * count, subject=subject))

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        if self.pending:
            message = data.draw(st.sampled_from(self.pending))
            assert self.buffer.delete(message.id)
            self.pending.remove(message)
            self.gone.append(message.id)

    @rule(data=st.data())
    def delete_a_run(self, data: st.DataObject) -> None:
        # Runs of dead entries in the middle of the queue, for the reads behind them to pass over.
        if self.pending:
            start = data.draw(st.integers(0, len(self.pending) - 1))
            run = self.pending[start:start + data.draw(st.integers(1, 6))]
            assert self.buffer.delete_many([m.id for m in run]) == len(run)
            del self.pending[start:start + len(run)]
            self.gone.extend(m.id for m in run)

    @rule()
    def pop(self) -> None:
        message = self.buffer.pop()
        if message is None:
            assert not self.pending
        else:
            assert message.id == self.pending.pop(0).id
            self.gone.append(message.id)

    @rule()
    def view_pop(self) -> None:
        message = self.view.pop()
        mine = [m for m in self.pending if m.subject == "a"]
        assert (message and message.id) == (mine[0].id if mine else None)
        if message is not None:
            self.pending.remove(mine[0])
            self.gone.append(message.id)

    @rule(data=st.data())
    def mark_dead_and_requeue(self, data: st.DataObject) -> None:
        if self.pending:
            message = data.draw(st.sampled_from(self.pending))
            assert self.buffer.mark_dead(message.id, "test")
            self.pending.remove(message)
            self.dead.append(message)
        requeue: bool = data.draw(st.booleans())
        if self.dead and requeue:
            back = self.dead.pop(0)
            assert self.buffer.requeue(back.id)
            self.pending.append(back)  # at the back of the queue, with its id

    @rule(data=st.data(), limit=st.none() | st.integers(0, 5), scoped=st.booleans())
    def get_all(self, data: st.DataObject, limit: int | None, scoped: bool) -> None:
        after = self._some(data, [m.id for m in self.pending] + self.gone[-5:])
        buffer, subject = (self.view, "a") if scoped else (self.buffer, None)
        got = [m.id for m in buffer.get_all(limit, after=after)]
        assert got == self._expected(subject, limit, after)

    @rule(data=st.data(), limit=st.integers(1, 5))
    def claim_and_release(self, data: st.DataObject, limit: int) -> None:
        after = self._some(data, [m.id for m in self.pending])
        got = [m.id for m in self.buffer.claim(limit, owner=_OWNERS[0], lease=60, after=after)]
        assert got == self._expected(None, limit, after)
        # Another owner passes over them; pop too, until they are released.
        others = [m.id for m in self.buffer.claim(limit, owner=_OWNERS[1], lease=60, after=after)]
        assert not set(others) & set(got)
        assert others == [i for i in self._expected(None, None, after) if i not in got][:limit]
        assert self.buffer.release(got, owner=_OWNERS[0]) == len(got)
        assert self.buffer.release(others, owner=_OWNERS[1]) == len(others)

    @invariant()
    def counts_and_head(self) -> None:
        assert len(self.buffer) == len(self.pending)
        assert len(self.view) == sum(m.subject == "a" for m in self.pending)
        head = self.buffer.get()
        assert (head and head.id) == (self.pending[0].id if self.pending else None)
        assert self.buffer.stats().pending == len(self.pending)


@pytest.mark.usefixtures("compact_often")
def test_memory_queue_order_under_after_claims_and_removals() -> None:
    run_state_machine_as_test(_LaneMachine, settings=settings(
        max_examples=60, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)))


class _CountingDict(dict[int, Message]):
    """The store's pending messages, counting the lookups walks make."""

    lookups = 0

    def get(self, key: int, default: object = None) -> object:  # type: ignore[override]
        type(self).lookups += 1
        return super().get(key, default)


def test_reading_in_windows_looks_at_each_message_once() -> None:
    # The relay's read: get_all(500, after=<last id of the previous window>) until []. Each window must start
    # where the last one ended, not walk from the head (which made reading n messages cost n^2 / 1000 lookups).
    with pbuffer.open("memory://", subject="s") as buffer:
        buffer.save_many([b"x"] * 20_000)
        store = buffer._store  # type: ignore[attr-defined]
        store.pending = _CountingDict(store.pending)
        windows, after = 0, None
        while page := buffer.get_all(500, after=after):
            after, windows = page[-1].id, windows + 1
        assert windows == 40
        assert _CountingDict.lookups <= 20_000 + 40


def test_a_long_dead_run_is_walked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A message stuck at the head (claimed by a relay that keeps retrying it) while everything behind it is
    # published and deleted: the dead run behind the head is passed over once, then jumped.
    monkeypatch.setattr(memory, "_COMPACT_SLACK", 10**9)  # no compaction: the skip runs alone must do it
    with pbuffer.open("memory://") as buffer:
        stuck, *rest = buffer.save_many([b"x"] * 10_001, subject="s")
        buffer.delete_many([m.id for m in rest[:-1]])
        store = buffer._store  # type: ignore[attr-defined]
        store.pending = _CountingDict(store.pending)
        _CountingDict.lookups = 0
        for _ in range(100):
            assert [m.id for m in buffer.get_all(5)] == [stuck.id, rest[-1].id]
        assert _CountingDict.lookups <= 10_000 + 100 * 4


def test_lanes_are_compacted_when_the_dead_outnumber_the_live() -> None:
    with pbuffer.open("memory://") as buffer:
        saved = buffer.save_many([b"x"] * 10_000, subject="s")
        buffer.delete_many([m.id for m in saved[1::2]])
        buffer.delete_many([m.id for m in saved[2:8000:2]])
        lane = buffer._store.lane  # type: ignore[attr-defined]
        assert len(lane) <= 2 * len(buffer) + memory._COMPACT_SLACK
        assert [m.id for m in buffer.get_all()] == [saved[0].id] + [m.id for m in saved[8000::2]]


def _many_ids() -> Iterator[str]:
    for _ in range(3):
        yield from ids.new_ids(1000)
        for _ in range(1000):
            yield ids.new_id()


def test_ids_from_batched_tails_are_uuid7_and_increasing() -> None:
    made = list(_many_ids())  # several batches of random tails, through both entry points
    assert all(_UUID7.fullmatch(message_id) for message_id in made)
    assert made == sorted(made) and len(set(made)) == len(made)
    # Over 4,096 ids in one millisecond: the counter borrows the next millisecond and stays increasing.
    same_ms = [ids.new_id(1_700_000_000_000_000_000) for _ in range(10_000)]
    assert same_ms == sorted(same_ms) and len(set(same_ms)) == 10_000


def test_a_forked_child_never_hands_out_the_parents_batched_tails() -> None:
    ids.new_id()  # a batch of tails is made and partly used
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(r)
        os.write(w, "".join(ids.new_id()[19:] for _ in range(600)).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        child = pipe.read().decode()
    os.waitpid(pid, 0)
    child_tails = {child[i:i + 17] for i in range(0, len(child), 17)}
    parent_tails = {ids.new_id()[19:] for _ in range(600)}
    assert len(child_tails) == 600 and not child_tails & parent_tails


def test_message_stays_a_frozen_dataclass() -> None:
    import dataclasses

    message = Message("01a2314e-d605-7573-b61f-5cb2adc640ae", "s", b"p", pbuffer.message.NO_HEADERS, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.id = "x"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(Message)] == ["id", "subject", "payload", "headers", "created_us"]
    assert dataclasses.replace(message, subject="t") == Message(message.id, "t", b"p", message.headers, 1)
    assert Message(id=message.id, subject="s", payload=b"p", headers=message.headers, created_us=1) == message
