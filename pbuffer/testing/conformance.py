"""Behaviour every Buffer backend must show: the written contract of :class:`pbuffer.Buffer`, as tests."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

import pbuffer
from pbuffer import Buffer, BufferFullError, ConfigurationError, Message, Outgoing, ValidationError

__all__ = ["AsyncBufferConformance", "BufferConformance", "MakeBuffer"]

MakeBuffer = Callable[..., Buffer]

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
SUBJECT = "orders.created"

BAD_SUBJECTS = ["", " ", "a b", "a\tb", "a\r\nb", "a\x00b", "a.*", "a.>", "*", ">", "a..b", ".a", "a.", "a\x7fb",
                "a\x85b", "bad\ud800surrogate", "x" * 513,
                # System subjects the server acts on, and inboxes: refused without allow_subject_prefixes.
                "$JS.API.STREAM.PURGE.ORDERS", "$JS.API.STREAM.DELETE.OTHER", "$KV.orders.k1", "$SYS.REQ.SERVER.PING",
                "$", "_INBOX.abc"]
BAD_HEADERS: list[Any] = [
    {"X-A": "v\r\nPUB evil 0"}, {"X-A": "line\nbreak"}, {"X-A": "nul\x00"}, {"bad name": "v"}, {"a:b": "v"},
    {"": "v"}, {"X-A": 1}, {1: "v"}, {"X-A": " padded"}, {"X-A": "padded\t"}, {"Nats-Msg-Id": "chosen"},
    {"nats-msg-id": "chosen"}, ["X-A", "v"], {"X-A": "a\x85b"}, {"X-A": "c1\x80\x9f"}, {"X\x85A": "v"},
]


def _same(a: Message, b: Message) -> bool:
    return (a.id, a.subject, a.payload, dict(a.headers), a.created_us) == (
        b.id, b.subject, b.payload, dict(b.headers), b.created_us)


class _Base:
    @pytest.fixture
    def make_buffer(self) -> MakeBuffer:
        pytest.fail("the conformance suite needs a make_buffer fixture returning a callable(**options) -> Buffer")

    @pytest.fixture
    def buffer(self, make_buffer: MakeBuffer) -> Iterator[Buffer]:
        buf = make_buffer()
        yield buf
        buf.close()


class BufferConformance(_Base):
    """The synchronous contract."""

    # ----------------------------------------------------------------------------------------- save & read

    def test_save_returns_the_stored_message(self, buffer: Buffer) -> None:
        before = datetime.now(timezone.utc)
        message = buffer.save(b"hello", subject=SUBJECT, headers={"Trace-Id": "t-1"})
        assert UUID7.match(message.id)
        assert (message.subject, message.payload, dict(message.headers)) == (SUBJECT, b"hello", {"Trace-Id": "t-1"})
        assert message.created_at.utcoffset() == timedelta(0)
        assert before.timestamp() - 1 <= message.created_at.timestamp() <= time.time() + 1
        stored = buffer.get()
        assert stored is not None and _same(stored, message)

    def test_empty_buffer(self, buffer: Buffer) -> None:
        assert buffer.get() is None
        assert buffer.pop() is None
        assert buffer.get_all() == []
        assert buffer.dead_letters() == []
        assert len(buffer) == 0
        assert buffer.delete("01a00000-0000-7000-8000-000000000000") is False
        assert buffer.mark_dead("01a00000-0000-7000-8000-000000000000", "x") is False
        assert buffer.requeue("01a00000-0000-7000-8000-000000000000") is False

    def test_oldest_first(self, buffer: Buffer) -> None:
        saved = [buffer.save(str(i).encode(), subject=f"s.{i % 3}") for i in range(30)]
        assert [m.id for m in buffer.get_all()] == [m.id for m in saved]
        assert buffer.get().id == saved[0].id  # type: ignore[union-attr]
        assert len(buffer) == 30
        popped = [buffer.pop() for _ in range(30)]
        assert [m.id for m in popped if m] == [m.id for m in saved]
        assert buffer.pop() is None

    def test_get_does_not_remove(self, buffer: Buffer) -> None:
        saved = buffer.save(b"x", subject=SUBJECT)
        assert buffer.get().id == saved.id  # type: ignore[union-attr]
        assert buffer.get().id == saved.id  # type: ignore[union-attr]
        assert len(buffer) == 1

    def test_get_all_limit(self, buffer: Buffer) -> None:
        saved = buffer.save_many([b"a", b"b", b"c"], subject=SUBJECT)
        assert [m.id for m in buffer.get_all(2)] == [m.id for m in saved[:2]]
        assert buffer.get_all(0) == []
        assert len(buffer.get_all(10)) == 3
        for bad in (-1, 1.5, "2", True):
            with pytest.raises(ValidationError):
                buffer.get_all(bad)  # type: ignore[arg-type]

    def test_get_all_after(self, buffer: Buffer) -> None:
        saved = buffer.save_many([str(i).encode() for i in range(6)], subject=SUBJECT)
        assert [m.id for m in buffer.get_all(2, after=saved[1].id)] == [saved[2].id, saved[3].id]
        assert [m.id for m in buffer.get_all(after=saved[3].id)] == [saved[4].id, saved[5].id]
        assert buffer.get_all(after=saved[5].id) == []
        buffer.delete(saved[0].id)
        # Not pending any more: from the oldest.
        assert [m.id for m in buffer.get_all(2, after=saved[0].id)] == [saved[1].id, saved[2].id]
        with pytest.raises(ValidationError):
            buffer.get_all(after="nope")

    def test_save_many_in_order_and_interleaved_with_save(self, buffer: Buffer) -> None:
        first = buffer.save(b"first", subject=SUBJECT)
        many = buffer.save_many([b"1", Outgoing(b"2", subject="other.subject", headers={"K": "v"}), bytearray(b"3")],
                                subject=SUBJECT)
        last = buffer.save(b"last", subject=SUBJECT)
        assert [m.payload for m in many] == [b"1", b"2", b"3"]
        assert many[1].subject == "other.subject" and dict(many[1].headers) == {"K": "v"}
        assert [m.id for m in buffer.get_all()] == [first.id, *[m.id for m in many], last.id]
        assert len({m.id for m in many}) == 3

    def test_prepare_then_commit(self, buffer: Buffer) -> None:
        first = buffer.prepare(b"1", subject=SUBJECT)
        second = buffer.prepare(b"2", subject=SUBJECT, headers={"K": "v"})
        assert len(buffer) == 0  # prepared is not stored
        with pytest.raises(ValidationError):
            buffer.prepare(b"x", subject="bad subject")
        buffer.commit([first, second])
        assert [(m.id, m.payload) for m in buffer.get_all()] == [(first.id, b"1"), (second.id, b"2")]
        buffer.commit([])
        assert len(buffer) == 2

    def test_a_message_committed_twice_is_refused_whole(self, buffer: Buffer) -> None:
        # Ids are unique: a prepared message committed again (a retry after an error, say), alone, with others or
        # twice in one call, is refused, and nothing of that call is written. The memory backend stored a second
        # copy under the same id.
        first = buffer.prepare(b"1", subject=SUBJECT)
        buffer.commit([first])
        second = buffer.prepare(b"2", subject=SUBJECT)
        for again in ([first], [second, first], [second, second]):
            with pytest.raises(ValidationError, match="already in the buffer"):
                buffer.commit(again)
        assert [m.id for m in buffer.get_all()] == [first.id] and buffer.stats().pending == 1
        buffer.commit([second])
        assert [m.id for m in buffer.get_all()] == [first.id, second.id] and buffer.stats().pending == 2

    def test_a_dead_letter_whose_id_was_committed_again_is_not_requeued(self, buffer: Buffer) -> None:
        # A dead letter's message committed again (prepare() keeps the id) is pending under that id: requeueing
        # the dead letter would make two pending messages with one id. Refused, and both stay as they are. The
        # memory backend made the two, and its next pop raised KeyError.
        message = buffer.prepare(b"1", subject=SUBJECT)
        buffer.commit([message])
        assert buffer.mark_dead(message.id, "bad")
        buffer.commit([message])
        with pytest.raises(ValidationError, match="stays a dead letter"):
            buffer.requeue(message.id)
        assert [m.id for m in buffer.get_all()] == [message.id]
        assert [d.message.id for d in buffer.dead_letters()] == [message.id]
        assert (buffer.stats().pending, buffer.stats().dead) == (1, 1)
        popped = buffer.pop()
        assert popped is not None and popped.id == message.id and buffer.pop() is None
        assert buffer.requeue(message.id)
        assert [m.id for m in buffer.get_all()] == [message.id] and buffer.dead_letters() == []

    def test_save_many_is_all_or_nothing_on_bad_input(self, buffer: Buffer) -> None:
        with pytest.raises(ValidationError):
            buffer.save_many([b"ok", Outgoing(b"bad", subject="a b"), b"never"], subject=SUBJECT)
        with pytest.raises(TypeError):
            buffer.save_many([b"ok", "not bytes"], subject=SUBJECT)  # type: ignore[list-item]
        assert len(buffer) == 0
        assert buffer.save_many([], subject=SUBJECT) == []
        assert len(buffer) == 0

    def test_a_subject_already_seen_checks_every_other_argument(self, buffer: Buffer) -> None:
        # A subject found valid once is remembered (saves skip its check); nothing else may be skipped with it.
        buffer.save(b"warm", subject=SUBJECT)
        buffer.save_many([b"warm"], subject=SUBJECT)
        for bad_subject in (["orders"], {"a": 1}, SUBJECT.encode(), 7, "a b"):
            with pytest.raises(ValidationError):
                buffer.save(b"x", subject=bad_subject)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                buffer.save_many([b"x"], subject=bad_subject)  # type: ignore[arg-type]
        for bad_payload in ("text", 7, None, [b"x"]):
            with pytest.raises(TypeError):
                buffer.save(bad_payload, subject=SUBJECT)  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                buffer.save_many([b"ok", bad_payload], subject=SUBJECT)  # type: ignore[list-item]
        with pytest.raises(ValidationError):
            buffer.save(b"x", subject=SUBJECT, headers={"Bad Name": "v"})
        payload = bytearray(b"abc")
        saved = [buffer.save(payload, subject=SUBJECT), *buffer.save_many([payload, b"def"], subject=SUBJECT)]
        payload[0:1] = b"z"
        assert [type(m.payload) for m in saved] == [bytes] * 3
        assert [m.payload for m in buffer.get_all()] == [b"warm", b"warm", b"abc", b"abc", b"def"]

    def test_payloads_and_headers_round_trip(self, buffer: Buffer) -> None:
        payloads = [b"", bytes(range(256)), b"\x00" * 10, "héllo ✓".encode(), b"x" * (1 << 20)]
        headers = {"Content-Type": "application/x-protobuf", "X-Unicode": "naïve ✓", "X-Tab": "a\tb", "X-Empty": ""}
        saved = [buffer.save(p, subject=SUBJECT, headers=headers) for p in payloads]
        # Without headers too, one by one and in one batch (sqlite writes such rows without the headers column and
        # binds payloads up to 4 KiB as copies: both sides of that size), and a batch mixing both kinds.
        bare = [*payloads, b"y" * 4096, b"y" * 4097]
        saved += [buffer.save(p, subject=SUBJECT) for p in bare]
        saved += buffer.save_many(bare, subject=SUBJECT)
        saved += buffer.save_many([b"a", Outgoing(b"b", headers={"K": "v"}), b"c" * 5000], subject=SUBJECT)
        saved.append(buffer.save(memoryview(b"view"), subject=SUBJECT))
        for stored, original in zip(buffer.get_all(), saved, strict=True):
            assert _same(stored, original)
            assert type(stored.payload) is bytes
        assert saved[-1].payload == b"view" and dict(saved[-1].headers) == {}

    def test_messages_are_immutable(self, buffer: Buffer) -> None:
        message = buffer.save(b"x", subject=SUBJECT, headers={"A": "b"})
        with pytest.raises(dataclasses.FrozenInstanceError):
            message.payload = b"y"  # type: ignore[misc]
        with pytest.raises(TypeError):
            message.headers["A"] = "c"  # type: ignore[index]
        assert "payload=<1 bytes>" in repr(message)  # never the payload itself

    def test_caller_mutations_do_not_reach_the_buffer(self, buffer: Buffer) -> None:
        payload, headers = bytearray(b"abc"), {"A": "1"}
        buffer.save(payload, subject=SUBJECT, headers=headers)
        payload[0:1], headers["A"] = b"z", "2"
        stored = buffer.get()
        assert stored is not None and stored.payload == b"abc" and dict(stored.headers) == {"A": "1"}

    def test_ids_unique_and_time_ordered(self, buffer: Buffer) -> None:
        saved = [buffer.save(b"x", subject=SUBJECT) for _ in range(300)]
        saved += buffer.save_many([b"y"] * 300, subject=SUBJECT)
        ids = [m.id for m in saved]
        assert len(set(ids)) == 600
        assert ids == sorted(ids)

    def test_ids_never_reused_after_draining(self, buffer: Buffer) -> None:
        first = buffer.save(b"x", subject=SUBJECT)
        assert buffer.pop() is not None
        second = buffer.save(b"x", subject=SUBJECT)
        assert second.id != first.id
        assert buffer.get().id == second.id  # type: ignore[union-attr]

    # --------------------------------------------------------------------------------------- delete & pop

    def test_delete(self, buffer: Buffer) -> None:
        a, b, c = buffer.save_many([b"a", b"b", b"c"], subject=SUBJECT)
        assert buffer.delete(b.id) is True
        assert buffer.delete(b.id) is False
        assert [m.id for m in buffer.get_all()] == [a.id, c.id]
        assert len(buffer) == 2

    def test_delete_many(self, buffer: Buffer) -> None:
        saved = buffer.save_many([str(i).encode() for i in range(1200)], subject=SUBJECT)
        buffer.mark_dead(saved[5].id, "dead")
        doomed = [m.id for m in saved[:1100]]
        assert buffer.delete_many([*doomed, doomed[0], "01a00000-0000-7000-8000-000000000000"]) == 1100
        assert [m.id for m in buffer.get_all()] == [m.id for m in saved[1100:]]
        assert buffer.dead_letters() == []
        assert buffer.delete_many([]) == 0
        with pytest.raises(ValidationError):
            buffer.delete_many([saved[-1].id, "nope"])
        assert len(buffer) == 100  # refused before anything was deleted

    def test_delete_removes_dead_letters_too(self, buffer: Buffer) -> None:
        message = buffer.save(b"a", subject=SUBJECT)
        buffer.mark_dead(message.id, "rejected")
        assert buffer.delete(message.id) is True
        assert buffer.dead_letters() == []

    def test_pop_returns_and_removes(self, buffer: Buffer) -> None:
        saved = buffer.save(b"a", subject=SUBJECT, headers={"H": "v"})
        popped = buffer.pop()
        assert popped is not None and _same(popped, saved)
        assert buffer.get() is None and len(buffer) == 0

    def test_bad_ids(self, buffer: Buffer) -> None:
        for bad in (None, 1, b"id", "", "not-a-message-id", "01A00000-0000-7000-8000-000000000000"):
            with pytest.raises(ValidationError):
                buffer.delete(bad)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                buffer.mark_dead(bad, "reason")  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                buffer.requeue(bad)  # type: ignore[arg-type]

    # ---------------------------------------------------------------------------------------- dead letters

    def test_mark_dead_hides_from_readers(self, buffer: Buffer) -> None:
        a, b, c = buffer.save_many([b"a", b"b", b"c"], subject=SUBJECT)
        assert buffer.mark_dead(b.id, "payload too large", attempts=3) is True
        assert buffer.mark_dead(b.id, "again") is False
        assert [m.id for m in buffer.get_all()] == [a.id, c.id]
        assert len(buffer) == 2
        (dead,) = buffer.dead_letters()
        assert _same(dead.message, b)
        assert (dead.reason, dead.attempts) == ("payload too large", 3)
        assert abs(dead.failed_at.timestamp() - time.time()) < 60
        assert [m.id for m in (buffer.pop(), buffer.pop()) if m] == [a.id, c.id]
        assert buffer.pop() is None

    def test_bad_reasons_and_attempts(self, buffer: Buffer) -> None:
        message = buffer.save(b"x", subject=SUBJECT)
        for reason, attempts in (("nul\x00byte", 1), ("bad\ud800", 1), (None, 1), ("ok", -1), ("ok", True)):
            with pytest.raises(ValidationError):
                buffer.mark_dead(message.id, reason, attempts=attempts)  # type: ignore[arg-type]
        assert buffer.mark_dead(message.id, "ünïcode ✓ reason\nwith a newline", attempts=0) is True
        assert buffer.dead_letters()[0].reason == "ünïcode ✓ reason\nwith a newline"

    def test_dead_letters_in_the_order_they_died(self, buffer: Buffer) -> None:
        saved = buffer.save_many([b"0", b"1", b"2", b"3"], subject=SUBJECT)
        for message in (saved[3], saved[0], saved[2]):
            buffer.mark_dead(message.id, f"r{message.payload.decode()}")
        assert [d.message.id for d in buffer.dead_letters()] == [saved[3].id, saved[0].id, saved[2].id]
        assert [d.reason for d in buffer.dead_letters(2)] == ["r3", "r0"]
        # Requeued and dead again: it goes to the end.
        buffer.requeue(saved[3].id)
        buffer.mark_dead(saved[3].id, "again")
        assert [d.message.id for d in buffer.dead_letters()] == [saved[0].id, saved[2].id, saved[3].id]

    def test_sequence_numbers_are_not_identities(self, buffer: Buffer) -> None:
        # Draining the newest messages lets storage reuse their sequence numbers; nothing may mix them up.
        for _ in range(3):
            a = buffer.save(b"a", subject=SUBJECT)
            buffer.mark_dead(a.id, "dead")
            b = buffer.save(b"b", subject=SUBJECT)
            assert buffer.pop().id == b.id  # type: ignore[union-attr]
        assert [d.message.payload for d in buffer.dead_letters()] == [b"a", b"a", b"a"]
        assert len({d.message.id for d in buffer.dead_letters()}) == 3

    def test_requeue_goes_to_the_back_keeping_its_id(self, buffer: Buffer) -> None:
        a, b, c = buffer.save_many([b"a", b"b", b"c"], subject=SUBJECT, headers={"H": "1"})
        buffer.mark_dead(a.id, "transient")
        assert buffer.requeue(a.id) is True
        assert buffer.requeue(a.id) is False
        assert buffer.requeue(b.id) is False  # pending, not dead
        assert [m.id for m in buffer.get_all()] == [b.id, c.id, a.id]
        assert _same(buffer.get_all()[-1], a)
        assert buffer.dead_letters() == []

    # ------------------------------------------------------------------------------------------- subjects

    def test_subject_is_required(self, buffer: Buffer) -> None:
        with pytest.raises(ValidationError, match="subject"):
            buffer.save(b"x")
        assert len(buffer) == 0

    @pytest.mark.parametrize("subject", BAD_SUBJECTS)
    def test_bad_subjects_are_refused(self, buffer: Buffer, subject: str) -> None:
        with pytest.raises(ValidationError):
            buffer.save(b"x", subject=subject)
        assert len(buffer) == 0

    def test_subjects_that_are_valid(self, buffer: Buffer) -> None:
        for subject in ("a", "A.b", "orders.created.v1", "ünïcode.ok", "x" * 512, "a-b_c.d$e"):
            buffer.save(b"x", subject=subject)
        assert [m.subject for m in buffer.get_all()][1] == "A.b"

    def test_subject_injection_is_stored_verbatim_or_refused(self, buffer: Buffer) -> None:
        with pytest.raises(ValidationError):
            buffer.save(b"x", subject="x'; DROP TABLE pbuffer_messages;--")
        buffer.save(b"x", subject="x';DROP.TABLE.pbuffer_messages;--")
        assert buffer.get().subject == "x';DROP.TABLE.pbuffer_messages;--"  # type: ignore[union-attr]

    def test_system_subjects_need_an_opt_in(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(allow_subject_prefixes=("$KV.orders.", "_INBOX.replies")) as buf:
            kv = buf.save(b"v", subject="$KV.orders.k1")
            buf.save_many([b"r"], subject="_INBOX.replies.1")
            for subject in ("$KV.orders2.k1", "$KV.users.k1", "$JS.API.STREAM.PURGE.ORDERS", "_INBOX.other"):
                with pytest.raises(ValidationError, match="system subject"):
                    buf.save(b"x", subject=subject)
            assert [m.subject for m in buf.get_all()] == ["$KV.orders.k1", "_INBOX.replies.1"]
            assert buf.pop().id == kv.id  # type: ignore[union-attr]
        with make_buffer(subject="$KV.orders.k2", allow_subject_prefixes=["$KV.orders"]) as scoped:
            assert scoped.save(b"v").subject == "$KV.orders.k2"
        with pytest.raises(ValidationError, match="system subject"):
            make_buffer(subject="$KV.orders.k2")
        # No opt-in reaches the JetStream API, however broad or narrow.
        for prefixes in (("$JS",), ("$JS.API.",), ("$JS.API.STREAM.PURGE.ORDERS",), ("$KV.a.", "$SYS.")):
            with pytest.raises(ConfigurationError, match="allow_subject_prefixes"):
                make_buffer(allow_subject_prefixes=prefixes)

    @pytest.mark.parametrize("headers", BAD_HEADERS)
    def test_bad_headers_are_refused(self, buffer: Buffer, headers: Any) -> None:
        with pytest.raises(ValidationError):
            buffer.save(b"x", subject=SUBJECT, headers=headers)
        assert len(buffer) == 0

    @pytest.mark.parametrize("payload", ["text", 1, None, [1, 2], {"a": 1}, 1.5])
    def test_payload_must_be_bytes_like(self, buffer: Buffer, payload: Any) -> None:
        with pytest.raises(TypeError, match="bytes-like"):
            buffer.save(payload, subject=SUBJECT)
        assert len(buffer) == 0

    def test_scoped_buffer(self, make_buffer: MakeBuffer) -> None:
        with make_buffer() as everything, make_buffer(subject="a.b") as scoped:
            other = everything.save(b"other", subject="c.d")
            mine = scoped.save(b"mine")
            assert mine.subject == "a.b"
            also_mine = everything.save(b"also", subject="a.b")
            with pytest.raises(ValidationError, match="scoped"):
                scoped.save(b"x", subject="c.d")
            assert [m.id for m in scoped.get_all()] == [mine.id, also_mine.id]
            assert len(scoped) == 2 and len(everything) == 3
            assert scoped.delete(other.id) is False
            assert scoped.delete_many([other.id]) == 0
            assert scoped.mark_dead(other.id, "x") is False
            assert scoped.pop().id == mine.id  # type: ignore[union-attr]
            assert scoped.mark_dead(also_mine.id, "bad") is True
            assert [d.message.id for d in scoped.dead_letters()] == [also_mine.id]
            assert everything.mark_dead(other.id, "bad") is True
            assert [d.message.id for d in scoped.dead_letters()] == [also_mine.id]
            assert scoped.requeue(other.id) is False
            assert scoped.pop() is None
            assert [m.id for m in everything.get_all()] == []

    def test_scope_must_be_valid(self, make_buffer: MakeBuffer) -> None:
        with pytest.raises(ValidationError):
            make_buffer(subject="a b")

    # --------------------------------------------------------------------------------------- lifecycle

    def test_messages_outlive_the_buffer_object(self, make_buffer: MakeBuffer) -> None:
        with make_buffer() as first:
            saved = first.save_many([b"1", b"2"], subject=SUBJECT, headers={"A": "b"})
            first.mark_dead(saved[0].id, "why")
        with make_buffer() as second:
            assert [m.id for m in second.get_all()] == [saved[1].id]
            assert _same(second.get_all()[0], saved[1])
            assert [(d.message.id, d.reason) for d in second.dead_letters()] == [(saved[0].id, "why")]

    def test_closed_buffer_refuses_work(self, make_buffer: MakeBuffer) -> None:
        buf = make_buffer()
        with buf:
            assert not buf.closed
        assert buf.closed
        buf.close()  # idempotent
        with pytest.raises(pbuffer.PBufferError, match="closed"):
            buf.save(b"x", subject=SUBJECT)
        with pytest.raises(pbuffer.PBufferError, match="closed"):
            buf.get()

    def test_listeners_hear_saves(self, buffer: Buffer) -> None:
        heard: list[int] = []
        listener = lambda: heard.append(len(heard))  # noqa: E731
        buffer.add_listener(listener)
        buffer.add_listener(lambda: 1 / 0)  # a broken listener does not fail the save
        buffer.save(b"x", subject=SUBJECT)
        buffer.save_many([b"y", b"z"], subject=SUBJECT)
        buffer.remove_listener(listener)
        buffer.save(b"w", subject=SUBJECT)
        assert heard == [0, 1]
        assert len(buffer) == 4

    # -------------------------------------------------------------------------------------- concurrency

    def test_threads_pop_every_message_exactly_once(self, buffer: Buffer) -> None:
        threads, per_thread = 8, 150
        popped: list[list[Message]] = [[] for _ in range(threads)]
        saved: list[list[Message]] = [[] for _ in range(threads)]
        errors: list[BaseException] = []
        saving_done = threading.Event()
        finished = threading.Barrier(threads)

        def work(n: int) -> None:
            try:
                for i in range(per_thread):
                    saved[n].append(buffer.save(f"{n}:{i}".encode(), subject=f"t.{n}"))
                    if i % 2:
                        found = buffer.pop()
                        if found is not None:
                            popped[n].append(found)
                if finished.wait() == 0:
                    saving_done.set()
                while True:
                    found = buffer.pop()
                    if found is None:
                        break
                    popped[n].append(found)
            except BaseException as exc:
                errors.append(exc)
                finished.abort()

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=300)
        assert not errors, errors
        assert saving_done.is_set()
        all_saved = [m.id for chunk in saved for m in chunk]
        all_popped = [m.id for chunk in popped for m in chunk]
        assert len(all_popped) == len(set(all_popped)), "a message was popped twice"
        assert sorted(all_popped) == sorted(all_saved), "a message was lost"
        assert len(buffer) == 0
        # Each consumer sees each producer's messages in the producer's order.
        position = {m.id: i for chunk in saved for i, m in enumerate(chunk)}
        for chunk in popped:
            for producer in range(threads):
                seen = [position[m.id] for m in chunk if m.subject == f"t.{producer}"]
                assert seen == sorted(seen)

    # ------------------------------------------------------------------------------------ stats and limits

    def test_stats_follow_every_change(self, buffer: Buffer) -> None:
        empty = buffer.stats()
        assert (empty.pending, empty.pending_bytes, empty.dead, empty.dead_bytes, empty.oldest_age) == (0, 0, 0, 0,
                                                                                                           None)
        a = buffer.save(b"12345", subject="s.a")
        buffer.save_many([b"1", b"22", Outgoing(b"333", subject="s.b")], subject="s.a")
        buffer.save(b"4444", subject="s.b")
        assert buffer.pop() is not None  # a
        b = buffer.get_all()
        assert buffer.delete(b[0].id)
        assert buffer.mark_dead(b[1].id, "broken")
        assert buffer.mark_dead(b[2].id, "broken")
        assert buffer.requeue(b[2].id)
        assert buffer.delete_many([b[3].id, a.id]) == 1
        pending, dead = buffer.get_all(), buffer.dead_letters()
        stats = buffer.stats()
        assert (stats.pending, stats.pending_bytes) == (len(pending), sum(len(m.payload) for m in pending))
        assert (stats.dead, stats.dead_bytes) == (len(dead), sum(len(d.message.payload) for d in dead))
        assert (stats.pending, stats.dead, stats.dropped, stats.expired) == (1, 1, 0, 0)
        assert stats.deleted == (3 if type(buffer).counts_deletions else 0)  # the pop, delete and delete_many
        assert stats.oldest_age is not None and 0 <= stats.oldest_age < 60

    def test_every_message_saved_is_counted_once(self, make_buffer: MakeBuffer) -> None:
        """pending + dead + dropped + expired + deleted grows by exactly one per save, whatever moves or removes a
        message (so two readings tell saves and deletions apart: ``pbuffer watch``'s rates)."""
        with make_buffer(max_messages=4, overflow="drop_oldest", ttl=0.2) as buf:
            if not type(buf).counts_deletions:
                pytest.skip(f"{type(buf).__name__} does not count deletions (counts_deletions is false)")

            def counted() -> tuple[int, int]:
                s, share = buf.stats(), buf.subject_stats()[SUBJECT]
                every = s.pending + s.dead + s.dropped + s.expired + s.deleted
                assert every == share.pending + share.dead + share.dropped + share.expired + share.deleted
                return every, s.deleted

            saved = buf.save_many([b"a", b"b", b"c"], subject=SUBJECT)
            assert counted() == (3, 0)
            assert buf.mark_dead(saved[0].id, "x") and buf.requeue(saved[0].id)  # moved, not removed
            assert buf.delete(saved[1].id)
            assert counted() == (3, 1)
            assert buf.pop() is not None
            assert counted() == (3, 2)
            buf.save_many([b"d", b"e", b"f", b"g"], subject=SUBJECT)  # over max_messages: drops the oldest
            assert counted()[0] == 7
            buf.save(b"h", subject=SUBJECT)
            time.sleep(0.3)  # every message outlives the ttl
            assert buf.pop() is None  # each one popped is found expired: counted as expired, not deleted
            assert buf.expire() == 0
            assert counted()[0] == 8 and buf.stats().pending == 0

    def test_stats_are_shared_and_scoped(self, make_buffer: MakeBuffer) -> None:
        with make_buffer() as whole, make_buffer(subject="s.a") as scoped, make_buffer() as other:
            whole.save_many([b"xx"] * 3, subject="s.a")
            whole.save_many([b"yyy"] * 2, subject="s.b")
            assert (scoped.stats().pending, scoped.stats().pending_bytes) == (3, 6)
            assert (other.stats().pending, other.stats().pending_bytes) == (5, 12)

    def test_limits_are_checked_when_opened(self, make_buffer: MakeBuffer) -> None:
        for bad in ({"max_messages": 0}, {"max_bytes": -1}, {"max_messages": True}, {"overflow": "drop"},
                    {"ttl": 0}, {"block_timeout": -1}, {"ttl": "1"}):
            with pytest.raises(ConfigurationError):
                make_buffer(**bad)

    def test_full_buffer_rejects_and_writes_nothing(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(max_messages=3, max_bytes=100) as buf:
            kept = buf.save_many([b"a", b"b"], subject=SUBJECT)
            with pytest.raises(BufferFullError):
                buf.save_many([b"c", b"d"], subject=SUBJECT)  # one place left: all or nothing
            kept.append(buf.save(b"c", subject=SUBJECT))
            with pytest.raises(BufferFullError):
                buf.save(b"d", subject=SUBJECT)
            with pytest.raises(BufferFullError):
                buf.commit([buf.prepare(b"d", subject=SUBJECT)])
            assert [m.id for m in buf.get_all()] == [m.id for m in kept]
            assert buf.pop() is not None
            buf.save(b"d", subject=SUBJECT)  # room again
            with pytest.raises(BufferFullError):
                buf.save(b"x" * 101, subject=SUBJECT)  # could never fit
            assert buf.stats().dropped == 0 and len(buf) == 3

    def test_max_bytes_counts_payload_bytes(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(max_bytes=10) as buf:
            buf.save(b"123456", subject=SUBJECT)
            with pytest.raises(BufferFullError):
                buf.save(b"12345", subject=SUBJECT)
            buf.save(b"1234", subject=SUBJECT)
            assert buf.stats().pending_bytes == 10

    def test_limits_hold_across_buffer_objects(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(max_messages=2) as one, make_buffer(max_messages=2) as two:
            one.save(b"a", subject=SUBJECT)
            two.save(b"b", subject=SUBJECT)
            with pytest.raises(BufferFullError):
                one.save(b"c", subject=SUBJECT)

    def test_drop_oldest_makes_room_and_counts(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(max_messages=3, overflow="drop_oldest") as buf:
            saved = [buf.save(str(i).encode(), subject=SUBJECT) for i in range(5)]
            assert [m.id for m in buf.get_all()] == [m.id for m in saved[2:]]
            more = buf.save_many([b"5", b"6"], subject=SUBJECT)
            assert [m.id for m in buf.get_all()] == [saved[4].id, *(m.id for m in more)]
            stats = buf.stats()
            assert (stats.pending, stats.dropped) == (3, 4)
            with pytest.raises(BufferFullError):
                buf.save_many([b"x"] * 4, subject=SUBJECT)  # more than the buffer can ever hold
            assert len(buf) == 3
        with make_buffer(max_bytes=10, overflow="drop_oldest") as buf:
            buf.save(b"x" * 9, subject=SUBJECT)  # 3 + 9 before
            last = buf.save(b"y" * 8, subject=SUBJECT)
            assert [m.id for m in buf.get_all()] == [last.id]
            assert buf.stats().pending_bytes == 8

    def test_block_waits_for_room(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(max_messages=2, overflow="block", block_timeout=30) as buf:
            buf.save_many([b"a", b"b"], subject=SUBJECT)
            saved: list[Message] = []
            saver = threading.Thread(target=lambda: saved.append(buf.save(b"c", subject=SUBJECT)))
            saver.start()
            time.sleep(0.2)
            assert saved == [] and len(buf) == 2  # waiting, nothing written
            popped = buf.pop()
            saver.join(30)
            assert popped is not None and popped.payload == b"a"
            assert [m.payload for m in buf.get_all()] == [b"b", b"c"] and saved[0].payload == b"c"
        with make_buffer(max_messages=2, overflow="block", block_timeout=0.2) as buf:
            with pytest.raises(BufferFullError, match="block_timeout"):
                buf.save(b"d", subject=SUBJECT)
            assert [m.payload for m in buf.get_all()] == [b"b", b"c"]

    def test_ttl_drops_old_messages_before_they_are_read_and_counts_them(self, make_buffer: MakeBuffer) -> None:
        with make_buffer(ttl=0.3) as buf:
            old = buf.save_many([b"old1", b"old2"], subject=SUBJECT)
            time.sleep(0.4)
            young = buf.save(b"young", subject=SUBJECT)
            assert [m.id for m in buf.get_all()] == [young.id]
            assert buf.stats().expired == 2 and buf.stats().pending == 1
            assert buf.delete(old[0].id) is False  # gone, and counted once
            buf.save(b"old3", subject=SUBJECT)
            time.sleep(0.4)
            assert buf.pop() is None
            assert buf.stats().expired == 4
            buf.save_many([b"x"] * 3, subject=SUBJECT)
            time.sleep(0.4)
            assert buf.expire() == 3 and buf.stats().expired == 7 and len(buf) == 0
        with make_buffer() as no_ttl:
            assert no_ttl.expire() == 0

    # ---------------------------------------------------------------------------------------------- claims

    def test_claims_split_the_queue_between_owners(self, buffer: Buffer) -> None:
        a, b = pbuffer.ids.new_id(), pbuffer.ids.new_id()
        saved = buffer.save_many([str(i).encode() for i in range(10)], subject=SUBJECT)
        first = buffer.claim(3, owner=a, lease=30)
        second = buffer.claim(3, owner=b, lease=30)
        assert [m.id for m in first] == [m.id for m in saved[:3]]
        assert [m.id for m in second] == [m.id for m in saved[3:6]]
        assert [m.id for m in buffer.claim(4, owner=a, lease=30)] == [m.id for m in [*saved[:3], saved[6]]]
        assert [m.id for m in buffer.claim(2, owner=a, lease=30, after=saved[6].id)] == [saved[7].id, saved[8].id]
        popped = buffer.pop()  # pop takes nothing another owner holds
        assert popped is not None and popped.id == saved[9].id
        assert len(buffer) == 9 and buffer.stats().pending == 9  # claimed messages are still pending
        assert buffer.claim(5, owner=pbuffer.ids.new_id(), lease=30) == []
        assert buffer.release([m.id for m in first], owner=b) == 0  # only the owner releases
        assert buffer.release([m.id for m in first], owner=a) == 3
        assert [m.id for m in buffer.claim(6, owner=b, lease=30)] == [m.id for m in saved[:6]]
        assert buffer.delete_many([m.id for m in saved[:6]]) == 6
        assert buffer.claim(5, owner=b, lease=30) == []

    def test_subject_stats_agree_with_the_messages(self, buffer: Buffer) -> None:
        one, two = f"{SUBJECT}.one", f"{SUBJECT}.two"
        first = buffer.save_many([b"a", b"bb", b"ccc"], subject=one)
        second = buffer.save_many([b"dddd", b"eeeee"], subject=two)
        assert buffer.mark_dead(first[0].id, "x")
        assert buffer.delete(second[0].id)
        counted = int(type(buffer).counts_deletions)
        expected = {one: pbuffer.SubjectStats(2, 5, 1, 1, 0, 0), two: pbuffer.SubjectStats(1, 5, 0, 0, 0, 0, counted)}
        assert buffer.subject_stats() == expected
        totals = buffer.stats()
        assert sum(s.pending for s in expected.values()) == totals.pending == len(buffer)
        assert sum(s.pending_bytes for s in expected.values()) == totals.pending_bytes
        assert sum(s.dead for s in expected.values()) == totals.dead
        # The contract's generic way (a walk, for backends without counters) agrees on what it can know.
        walked = {name: dataclasses.replace(share, deleted=0) for name, share in expected.items()}
        assert Buffer._subject_stats(buffer) == walked
        # A drained subject stays, at zero.
        assert buffer.delete(second[1].id)
        assert buffer.subject_stats()[two] == pbuffer.SubjectStats(0, 0, 0, 0, 0, 0, 2 * counted)
        assert list(buffer.subject_stats()) == [one, two]  # sorted by subject

    def test_a_claim_passes_over_skipped_subjects(self, buffer: Buffer) -> None:
        stuck, healthy = f"{SUBJECT}.stuck", f"{SUBJECT}.healthy"
        saved = buffer.save_many([Outgoing(str(i).encode(), subject=stuck if i % 2 == 0 else healthy)
                                  for i in range(12)])
        on_healthy = [m.id for m in saved if m.subject == healthy]
        on_stuck = [m.id for m in saved if m.subject == stuck]
        relay, other = pbuffer.ids.new_id(), pbuffer.ids.new_id()
        first = buffer.claim(4, owner=relay, lease=30, skip_subjects={stuck})
        assert [m.id for m in first] == on_healthy[:4]
        assert [m.id for m in buffer.claim(4, owner=relay, lease=30, after=first[-1].id, skip_subjects=[stuck])
                ] == on_healthy[4:]
        assert buffer.claim(4, owner=relay, lease=30, skip_subjects={stuck, healthy}) == []
        # What was passed over is not claimed: another owner takes it, oldest first.
        assert [m.id for m in buffer.claim(10, owner=other, lease=30)] == on_stuck
        # The contract's generic way (for backends without a filtered claim) keeps the same promise.
        buffer.release(on_healthy + on_stuck, owner=relay)
        buffer.release(on_stuck, owner=other)
        now_us = time.time_ns() // 1000
        generic = Buffer._claim_skipping(buffer, 3, None, relay, now_us + 30_000_000, now_us, frozenset({stuck}))
        assert [m.id for m in generic] == on_healthy[:3]
        assert [m.id for m in buffer.claim(10, owner=other, lease=30)] == [
            m.id for m in saved if m.id not in on_healthy[:3]]  # nothing else left claimed by it
        with pytest.raises(ValidationError):
            buffer.claim(1, owner=relay, lease=1, skip_subjects=stuck)  # one str: a likely mistake

    def test_claim_stats_count_live_claims_at_the_head(self, buffer: Buffer) -> None:
        stats = buffer.claim_stats()
        if stats is None:
            pytest.skip("this backend does not report claims (Buffer._claim_stats returns None)")
        assert (stats.held, stats.owners, stats.until_us, stats.looked_at) == (0, 0, None, 0)
        saved = buffer.save_many([str(i).encode() for i in range(10)], subject=SUBJECT)
        relay, other = pbuffer.ids.new_id(), pbuffer.ids.new_id()
        before_us = time.time_ns() // 1000
        buffer.claim(3, owner=relay, lease=30)
        buffer.claim(2, owner=other, lease=60, after=saved[2].id)
        after_us = time.time_ns() // 1000
        stats = buffer.claim_stats()
        assert stats is not None and (stats.held, stats.owners, stats.looked_at) == (5, 2, 10)
        # The latest lease end: the 60 s one.
        assert stats.until_us is not None and before_us + 60_000_000 <= stats.until_us <= after_us + 60_000_000
        # Only the head is looked at: a window of 4 sees 3 + 1 of the claimed messages.
        assert buffer.claim_stats(4) == type(stats)(4, 2, stats.until_us, 4)
        buffer.release([m.id for m in saved[:3]], owner=relay)
        assert (buffer.claim_stats() or stats).held == 2
        buffer.delete_many([m.id for m in saved])
        assert buffer.claim_stats() == type(stats)(0, 0, None, 0)
        for bad in (0, -1, 1.5, True, "10"):
            with pytest.raises(ValidationError):
                buffer.claim_stats(bad)  # type: ignore[arg-type]

    def test_a_claim_ends_with_its_lease(self, buffer: Buffer) -> None:
        saved = buffer.save_many([b"1", b"2"], subject=SUBJECT)
        holder, taker = pbuffer.ids.new_id(), pbuffer.ids.new_id()
        assert len(buffer.claim(2, owner=holder, lease=0.2)) == 2
        assert buffer.claim(2, owner=taker, lease=30) == []
        time.sleep(0.3)  # the holder "died": its lease ran out
        assert [m.id for m in buffer.claim(2, owner=taker, lease=30)] == [m.id for m in saved]
        assert buffer.claim(2, owner=holder, lease=30) == []

    def test_bad_claims(self, buffer: Buffer) -> None:
        owner = pbuffer.ids.new_id()
        for bad in ({"owner": "me"}, {"lease": 0}, {"lease": "1"}, {"after": "x"}):
            with pytest.raises(ValidationError):
                buffer.claim(1, **{"owner": owner, "lease": 1, **bad})  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            buffer.claim(-1, owner=owner, lease=1)
        with pytest.raises(ValidationError):
            buffer.release(["x"], owner=owner)

    def test_threads_claim_every_message_once(self, make_buffer: MakeBuffer) -> None:
        with make_buffer() as setup:
            setup.save_many([str(i).encode() for i in range(400)], subject=SUBJECT)
        claimed: list[list[str]] = [[] for _ in range(4)]
        errors: list[BaseException] = []

        def relay(n: int) -> None:
            owner = pbuffer.ids.new_id()
            try:
                with make_buffer() as buf:
                    while window := buf.claim(7, owner=owner, lease=60):
                        claimed[n].extend(m.id for m in window)
                        buf.delete_many(m.id for m in window)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=relay, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        every = [i for ids in claimed for i in ids]
        assert len(every) == len(set(every)) == 400


class AsyncBufferConformance(_Base):
    """The same contract through :class:`pbuffer.AsyncBuffer`."""

    def test_async_round_trip(self, make_buffer: MakeBuffer) -> None:
        async def scenario() -> None:
            async with pbuffer.AsyncBuffer(make_buffer()) as buf:
                a = await buf.save(b"a", subject=SUBJECT, headers={"H": "v"})
                b, c = await buf.save_many([b"b", b"c"], subject=SUBJECT)
                assert [m.id for m in await buf.get_all()] == [a.id, b.id, c.id]
                assert (await buf.get()).id == a.id  # type: ignore[union-attr]
                assert await buf.count() == 3
                assert await buf.mark_dead(b.id, "no", attempts=2)
                assert [(d.message.id, d.attempts) for d in await buf.dead_letters()] == [(b.id, 2)]
                assert await buf.requeue(b.id)
                assert await buf.delete(c.id)
                popped = [await buf.pop(), await buf.pop(), await buf.pop()]
                assert [m.id if m else None for m in popped] == [a.id, b.id, None]
            assert buf.closed

        asyncio.run(scenario())

    def test_async_errors_are_the_same(self, make_buffer: MakeBuffer) -> None:
        async def scenario() -> None:
            async with pbuffer.AsyncBuffer(make_buffer()) as buf:
                with pytest.raises(ValidationError):
                    await buf.save(b"x", subject="bad subject")
                with pytest.raises(TypeError):
                    await buf.save("text", subject=SUBJECT)  # type: ignore[arg-type]
                assert await buf.count() == 0

        asyncio.run(scenario())

    def test_concurrent_tasks_keep_their_order(self, make_buffer: MakeBuffer) -> None:
        async def producer(buf: pbuffer.AsyncBuffer, n: int) -> list[str]:
            return [(await buf.save(f"{n}:{i}".encode(), subject=f"p.{n}")).id for i in range(25)]

        async def scenario() -> None:
            async with pbuffer.AsyncBuffer(make_buffer()) as buf:
                per_task = await asyncio.gather(*(producer(buf, n) for n in range(8)))
                stored = [m.id for m in await buf.get_all()]
                assert sorted(stored) == sorted(i for ids in per_task for i in ids)
                for ids in per_task:
                    assert [i for i in stored if i in set(ids)] == ids

        asyncio.run(scenario())

    def test_wait_for_messages(self, make_buffer: MakeBuffer) -> None:
        async def scenario() -> None:
            async with pbuffer.AsyncBuffer(make_buffer()) as buf:
                assert await buf.wait_for_messages(timeout=0.05) is False
                waiter = asyncio.ensure_future(buf.wait_for_messages(timeout=30))
                await asyncio.sleep(0.05)
                assert not waiter.done()
                # A save from another thread of the process wakes the waiter too.
                await asyncio.get_running_loop().run_in_executor(None, lambda: buf.buffer.save(b"x", subject=SUBJECT))
                assert await asyncio.wait_for(waiter, 10) is True
                assert await buf.wait_for_messages(timeout=0) is True  # something is pending already

        asyncio.run(scenario())

    def test_open_async(self, make_buffer: MakeBuffer) -> None:
        async def scenario() -> None:
            buf = await pbuffer.open_async("memory://")
            async with buf:
                await buf.save(b"x", subject=SUBJECT)
                assert await buf.count() == 1

        asyncio.run(scenario())
