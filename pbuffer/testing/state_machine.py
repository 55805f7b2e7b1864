"""A hypothesis state machine: random sequences of buffer operations must agree with a simple model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pbuffer import Buffer, Message, Outgoing

__all__ = ["BufferStateMachineTest", "make_state_machine"]

SUBJECTS = st.sampled_from(["a", "a.b", "c"])
PAYLOADS = st.binary(max_size=64)
REASONS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
HEADER_VALUES = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cc", "Cs"]), max_size=8).filter(
    lambda value: value == value.strip())  # NATS clients strip header values, so pbuffer refuses padded ones
HEADERS = st.one_of(st.none(), st.dictionaries(st.sampled_from(["K", "Trace-Id"]), HEADER_VALUES, max_size=2))


@dataclass
class _Model:
    """Pending messages in order, and dead letters in the order they died (dicts keep insertion order)."""

    next_seq: int = 0
    pending: list[tuple[int, Message]] = field(default_factory=list)
    dead: dict[str, tuple[Message, str, int]] = field(default_factory=dict)
    #: Deleted totals per subject (delete, pop), from what the store already counted when the example began.
    deleted: dict[str, int] = field(default_factory=dict)

    def count_deleted(self, message: Message) -> None:
        self.deleted[message.subject] = self.deleted.get(message.subject, 0) + 1

    def add(self, message: Message) -> None:
        self.pending.append((self.next_seq, message))
        self.next_seq += 1

    def find(self, message_id: str) -> int | None:
        return next((i for i, (_, m) in enumerate(self.pending) if m.id == message_id), None)


def _key(message: Message) -> tuple[object, ...]:
    return message.id, message.subject, message.payload, dict(message.headers), message.created_us


def make_state_machine(make_empty_buffer: Callable[[], Buffer],
                       make_view: Callable[[Buffer, str], Buffer]) -> type[RuleBasedStateMachine]:
    """A state machine class over buffers from ``make_empty_buffer`` (a fresh, empty store for each example).

    ``make_view(buffer, subject)`` opens a second buffer on the same store, scoped to ``subject``.
    """

    class BufferMachine(RuleBasedStateMachine):
        ids = Bundle("ids")

        def __init__(self) -> None:
            super().__init__()
            self.buffer = make_empty_buffer()
            self.view = make_view(self.buffer, "a.b")
            self.model = _Model(deleted={name: share.deleted for name, share in self.buffer.subject_stats().items()})
            self.counts_deletions = type(self.buffer).counts_deletions

        def teardown(self) -> None:
            self.view.close()
            self.buffer.close()

        @rule(target=ids, payload=PAYLOADS, subject=SUBJECTS, headers=HEADERS)
        def save(self, payload: bytes, subject: str, headers: dict[str, str] | None) -> str:
            message = self.buffer.save(payload, subject=subject, headers=headers)
            self.model.add(message)
            return message.id

        @rule(target=ids, items=st.lists(st.tuples(PAYLOADS, st.none() | SUBJECTS), max_size=5))
        def save_many(self, items: list[tuple[bytes, str | None]]) -> object:
            messages = self.buffer.save_many([Outgoing(p, s) for p, s in items], subject="c")
            for message in messages:
                self.model.add(message)
            return multiple(*(m.id for m in messages))

        @rule(target=ids, payload=PAYLOADS)
        def save_through_view(self, payload: bytes) -> str:
            message = self.view.save(payload)
            self.model.add(message)
            return message.id

        @rule()
        def get(self) -> None:
            found = self.buffer.get()
            expected = self.model.pending[0][1] if self.model.pending else None
            assert (found and _key(found)) == (expected and _key(expected))

        @rule(limit=st.none() | st.integers(0, 6))
        def get_all(self, limit: int | None) -> None:
            expected = [_key(m) for _, m in self.model.pending][:limit]
            assert [_key(m) for m in self.buffer.get_all(limit)] == expected

        @rule()
        def view_get_all(self) -> None:
            expected = [_key(m) for _, m in self.model.pending if m.subject == "a.b"]
            assert [_key(m) for m in self.view.get_all()] == expected

        @rule()
        def pop(self) -> None:
            found = self.buffer.pop()
            if not self.model.pending:
                assert found is None
                return
            _, expected = self.model.pending.pop(0)
            assert found is not None and _key(found) == _key(expected)
            self.model.count_deleted(expected)

        @rule()
        def view_pop(self) -> None:
            found = self.view.pop()
            index = next((i for i, (_, m) in enumerate(self.model.pending) if m.subject == "a.b"), None)
            if index is None:
                assert found is None
                return
            _, expected = self.model.pending.pop(index)
            assert found is not None and _key(found) == _key(expected)
            self.model.count_deleted(expected)

        @rule(message_id=consumes(ids))
        def delete(self, message_id: str) -> None:
            index = self.model.find(message_id)
            expected = index is not None or message_id in self.model.dead
            if index is not None:
                self.model.count_deleted(self.model.pending.pop(index)[1])
            dead = self.model.dead.pop(message_id, None)
            if dead is not None:
                self.model.count_deleted(dead[0])
            assert self.buffer.delete(message_id) is expected

        @rule(message_id=ids, reason=REASONS, attempts=st.integers(0, 5))
        def mark_dead(self, message_id: str, reason: str, attempts: int) -> None:
            index = self.model.find(message_id)
            assert self.buffer.mark_dead(message_id, reason, attempts=attempts) is (index is not None)
            if index is not None:
                _, message = self.model.pending.pop(index)
                self.model.dead[message_id] = (message, reason, attempts)

        @rule(message_id=ids)
        def requeue(self, message_id: str) -> None:
            dead = self.model.dead.pop(message_id, None)
            assert self.buffer.requeue(message_id) is (dead is not None)
            if dead is not None:
                self.model.add(dead[0])

        @precondition(lambda self: bool(self.model.dead))
        @rule()
        def dead_letters(self) -> None:
            expected = [(_key(m), r, a) for m, r, a in self.model.dead.values()]
            assert [(_key(d.message), d.reason, d.attempts) for d in self.buffer.dead_letters()] == expected

        @invariant()
        def length(self) -> None:
            assert len(self.buffer) == len(self.model.pending)
            assert len(self.view) == sum(m.subject == "a.b" for _, m in self.model.pending)

        @invariant()
        def counters(self) -> None:
            # stats() reads counters kept by every write; after any sequence of operations they must agree with
            # the messages themselves, for the whole store and for the scoped view.
            for buffer, subject in ((self.buffer, None), (self.view, "a.b")):
                pending = [m for _, m in self.model.pending if subject in (None, m.subject)]
                dead = [m for m, _, _ in self.model.dead.values() if subject in (None, m.subject)]
                stats = buffer.stats()
                assert (stats.pending, stats.pending_bytes, stats.dead, stats.dead_bytes) == (
                    len(pending), sum(len(m.payload) for m in pending), len(dead), sum(len(m.payload) for m in dead))
                assert (stats.oldest_age is None) == (not pending)
                # The same counters per subject: every subject's share, and a subject drained keeps a zero row.
                by_subject = buffer.subject_stats()
                for name in {m.subject for m in pending + dead}:
                    mine = [m for m in pending if m.subject == name]
                    gone = [m for m in dead if m.subject == name]
                    share = by_subject[name]
                    assert (share.pending, share.pending_bytes, share.dead, share.dead_bytes) == (
                        len(mine), sum(len(m.payload) for m in mine), len(gone), sum(len(m.payload) for m in gone))
                assert sum(share.pending for share in by_subject.values()) == stats.pending
                assert sum(share.dead_bytes for share in by_subject.values()) == stats.dead_bytes
                if self.counts_deletions:  # every delete and pop counted, per subject and in scope
                    deleted = {name: count for name, count in self.model.deleted.items()
                               if subject in (None, name)}
                    assert stats.deleted == sum(deleted.values())
                    assert {name: share.deleted for name, share in by_subject.items() if share.deleted} == {
                        name: count for name, count in deleted.items() if count}

    return BufferMachine


class BufferStateMachineTest:
    """Runs the state machine over the ``make_buffer`` fixture (see :mod:`pbuffer.testing`)."""

    state_machine_settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                      suppress_health_check=list(HealthCheck))

    def test_state_machine(self, make_buffer: Callable[..., Buffer]) -> None:
        def make_empty() -> Buffer:
            buffer = make_buffer()
            # Each example starts from an empty store: clear what the previous one left.
            for dead in buffer.dead_letters():
                buffer.delete(dead.message.id)
            while buffer.pop() is not None:
                pass
            return buffer

        machine = make_state_machine(make_empty, lambda _buffer, subject: make_buffer(subject=subject))
        run_state_machine_as_test(machine, settings=self.state_machine_settings)
