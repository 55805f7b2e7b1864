"""The relay against a mock transport: delivery, order, retries, dead letters, waking and stopping."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise
from pathlib import Path
from typing import Any

import pytest

import pbuffer
from pbuffer import Message
from pbuffer.relay import Relay
from pbuffer.relay.transport import MockTransport, PublishResult


class FakeStream:
    """What a JetStream stream with deduplication would hold, fed by a MockTransport handler."""

    def __init__(self) -> None:
        self.stored: list[str] = []
        self.ids: set[str] = set()

    def accept(self, message: Message) -> PublishResult:
        if message.id in self.ids:
            return PublishResult.duplicate("S", self.stored.index(message.id) + 1)
        self.ids.add(message.id)
        self.stored.append(message.id)
        return PublishResult.stored("S", len(self.stored))


class WindowRecorder(MockTransport):
    """A MockTransport that also keeps the payload sizes of every window it was handed."""

    def __init__(self, handler: Callable[[Message], PublishResult]) -> None:
        super().__init__(handler)
        self.windows: list[list[int]] = []

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        self.windows.append([len(m.payload) for m in messages])
        return await super().publish(messages)


def drain_recording_windows(buf: pbuffer.Buffer, **options: Any) -> tuple[FakeStream, list[list[int]]]:
    """Drain ``buf`` with a Relay made with ``options`` into a fake stream; the stream and every window's payload
    sizes, in the order the windows went out."""
    stream = FakeStream()
    transport = WindowRecorder(stream.accept)

    async def scenario() -> None:
        async with Relay(buf, transport, **options) as relay:
            await relay.drain()

    run(scenario())
    return stream, transport.windows


def fail_once(stream: FakeStream, victims: set[str], *, transient: bool = True) -> Callable[[Message], PublishResult]:
    failed: set[str] = set()

    def handler(message: Message) -> PublishResult:
        if message.id in victims and message.id not in failed:
            failed.add(message.id)
            return PublishResult.failed("503 for a moment", transient=transient)
        return stream.accept(message)

    return handler


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_drain_publishes_oldest_first_and_deletes_after_ack() -> None:
    buf = pbuffer.open("memory://")
    saved = buf.save_many([str(i).encode() for i in range(1234)], subject="a.b")
    stream = FakeStream()
    transport = MockTransport(stream.accept)

    async def scenario() -> object:
        async with Relay(buf, transport, batch_size=100) as relay:
            return await relay.drain()

    stats = run(scenario())
    assert stream.stored == [m.id for m in saved]
    assert (stats.published, stats.duplicates, stats.dead_lettered, stats.retried) == (1234, 0, 0, 0)  # type: ignore[attr-defined]
    assert len(buf) == 0
    assert transport.closed


def test_duplicates_are_counted_and_deleted() -> None:
    buf = pbuffer.open("memory://")
    saved = buf.save_many([b"a", b"b", b"c"], subject="a.b")
    stream = FakeStream()
    stream.accept(saved[1])  # a crash after PubAck, before delete: the server already has it
    stats = run(Relay(buf, MockTransport(stream.accept)).drain())
    assert (stats.published, stats.duplicates) == (2, 1)  # type: ignore[attr-defined]
    assert sorted(stream.stored) == sorted(m.id for m in saved) and len(buf) == 0


def test_transient_failure_mid_window_is_retried_with_the_documented_reorder() -> None:
    buf = pbuffer.open("memory://")
    saved = buf.save_many([str(i).encode() for i in range(10)], subject="a.b")
    stream = FakeStream()
    retries: list[tuple[str, int]] = []
    relay = Relay(buf, MockTransport(fail_once(stream, {saved[4].id})), batch_size=10, backoff_initial=0.001,
                  on_retry=lambda m, f, n: retries.append((m.id, n)))
    stats = run(relay.drain())
    assert stats.retried == 1 and retries == [(saved[4].id, 1)]  # type: ignore[attr-defined]
    assert len(buf) == 0 and sorted(stream.stored) == sorted(m.id for m in saved)
    # The one documented exception: later messages of the window were accepted while #4 failed.
    assert stream.stored == [m.id for m in saved[:4] + saved[5:] + saved[4:5]]


def test_a_window_that_fails_whole_holds_its_subject_for_one_backoff() -> None:
    """The backoff doubles with each failed attempt of a subject, not with each of its messages in one window: a
    window of 200 messages that all failed once (a connection lost just then) held its subject for backoff_max,
    as if it had failed 200 times in a row (the demo waited 10 s for a server that was already back)."""
    buf = pbuffer.open("memory://")
    saved = buf.save_many([str(i).encode() for i in range(200)], subject="a.b")
    stream = FakeStream()
    handler = fail_once(stream, {m.id for m in saved})
    attempts: list[float] = []

    def timed(message: Message) -> PublishResult:
        attempts.append(time.monotonic())
        return handler(message)

    async def scenario() -> object:
        # backoff_max 60: a hold doubled 200 times lasts 30-60 s; one backoff lasts at most backoff_initial.
        async with Relay(buf, MockTransport(timed), batch_size=200, backoff_initial=0.01, backoff_max=60) as relay:
            return await asyncio.wait_for(relay.drain(), 20)

    stats = run(scenario())
    assert stats.retried == 200 and len(buf) == 0  # type: ignore[attr-defined]
    assert stream.stored == [m.id for m in saved]
    assert attempts[200] - attempts[199] < 5, "the subject was held far longer than one backoff"


def test_strict_order_never_reorders() -> None:
    buf = pbuffer.open("memory://")
    saved = buf.save_many([Message_outgoing(i) for i in range(12)])
    stream = FakeStream()
    victims = {saved[2].id, saved[7].id}
    stats = run(Relay(buf, MockTransport(fail_once(stream, victims)), batch_size=12, strict_order=True,
                      backoff_initial=0.001).drain())
    assert stats.retried == 2  # type: ignore[attr-defined]
    for subject in ("s.0", "s.1"):
        assert [i for i in stream.stored if i in {m.id for m in saved if m.subject == subject}] == [
            m.id for m in saved if m.subject == subject]
    assert len(buf) == 0


def Message_outgoing(i: int) -> pbuffer.Outgoing:
    return pbuffer.Outgoing(str(i).encode(), subject=f"s.{i % 2}")


def test_permanent_failure_dead_letters_and_the_rest_go_on() -> None:
    buf = pbuffer.open("memory://")
    saved = buf.save_many([b"ok", b"x" * 100, b"ok too"], subject="a.b")
    stream = FakeStream()
    dead: list[tuple[str, str, int]] = []

    def handler(message: Message) -> PublishResult:
        if len(message.payload) == 100:
            return PublishResult.failed("maximum payload exceeded", transient=False)
        return stream.accept(message)

    stats = run(Relay(buf, MockTransport(handler), on_dead_letter=lambda m, r, n: dead.append((m.id, r, n))).drain())
    assert stats.dead_lettered == 1 and stats.published == 2  # type: ignore[attr-defined]
    assert stream.stored == [saved[0].id, saved[2].id]
    (letter,) = buf.dead_letters()
    assert (letter.message.id, letter.reason, letter.attempts) == (saved[1].id, "maximum payload exceeded", 1)
    assert dead == [(saved[1].id, "maximum payload exceeded", 1)]


def test_corrupt_row_is_dead_lettered_never_published(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with pbuffer.open(f"sqlite:///{path}") as buf:
        saved = buf.save_many([b"first", b"damaged!", b"third"], subject="a.b")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE pbuffer_messages_0005 SET payload = ? WHERE payload = ?", (b"damaged?", b"damaged!"))
    conn.commit()
    conn.close()
    stream = FakeStream()
    with pbuffer.open(f"sqlite:///{path}") as buf:
        stats = run(Relay(buf, MockTransport(stream.accept)).drain())
        assert stream.stored == [saved[0].id, saved[2].id]
        assert stats.dead_lettered == 1  # type: ignore[attr-defined]
        assert len(buf) == 0
        # Listing it still refuses to hand out its damaged bytes; deleting it by id works.
        with pytest.raises(pbuffer.CorruptDatabaseError) as caught:
            buf.dead_letters()
        assert caught.value.message_id == saved[1].id
        assert buf.delete(saved[1].id) is True


def test_no_stream_is_retried_with_a_rate_limited_warning(caplog: pytest.LogCaptureFixture) -> None:
    buf = pbuffer.open("memory://")
    buf.save_many([b"1", b"2"], subject="nobody.listens")
    attempts = {"n": 0}
    stream = FakeStream()

    def handler(message: Message) -> PublishResult:
        attempts["n"] += 1
        if attempts["n"] <= 6:
            return PublishResult.failed("no stream covers subject 'nobody.listens'", transient=True, no_stream=True)
        return stream.accept(message)

    with caplog.at_level(logging.WARNING, logger="pbuffer.relay"):
        stats = run(Relay(buf, MockTransport(handler), backoff_initial=0.001).drain())
    warnings = [r for r in caplog.records if "nobody.listens" in r.getMessage()]
    assert len(warnings) == 1, "one warning per subject per minute, not one per retry"
    assert stats.retried == 6 and len(buf) == 0  # type: ignore[attr-defined]


def test_warns_when_retries_can_outlive_the_duplicate_window(caplog: pytest.LogCaptureFixture) -> None:
    buf = pbuffer.open("memory://")
    buf.save(b"x", subject="a.b")
    with caplog.at_level(logging.WARNING, logger="pbuffer.relay"):
        run(Relay(buf, MockTransport(FakeStream().accept, window=5.0), backoff_max=30).drain())
    assert any("deduplicates for 5 s" in r.getMessage() for r in caplog.records)


def test_run_wakes_on_save_and_stops_cleanly() -> None:
    async def scenario() -> None:
        buf = await pbuffer.open_async("memory://")
        stream = FakeStream()
        relay = Relay(buf, MockTransport(stream.accept), poll_interval=60)
        runner = asyncio.ensure_future(relay.run())
        await asyncio.sleep(0.05)
        saved = await buf.save(b"now", subject="a.b")
        for _ in range(100):  # far less than the 60 s poll: woken by the save itself
            if stream.stored:
                break
            await asyncio.sleep(0.01)
        assert stream.stored == [saved.id]
        assert await relay.lag() is None
        relay.stop()
        stats = await asyncio.wait_for(runner, 5)
        assert stats.published == 1
        await relay.close()
        await buf.close()

    asyncio.run(scenario())


def test_lag_is_the_age_of_the_oldest_pending_message() -> None:
    async def scenario() -> None:
        buf = pbuffer.open("memory://")
        relay = Relay(buf, MockTransport(FakeStream().accept))
        assert await relay.lag() is None
        buf.save(b"x", subject="a.b")
        await asyncio.sleep(0.05)
        lag = await relay.lag()
        assert lag is not None and 0.04 <= lag < 5

    asyncio.run(scenario())


def test_bad_relay_arguments_are_configuration_errors() -> None:
    buf = pbuffer.open("memory://")
    transport = MockTransport(lambda m: PublishResult.stored("S", 1))
    for bad in ({"batch_size": 0}, {"batch_size": True}, {"batch_size": 2.5}, {"backoff_max": float("nan")},
                {"backoff_initial": float("inf")}, {"poll_interval": 0}, {"lease": -1}, {"lease": 5, "backoff_max": 10},
                {"backoff_initial": 2, "backoff_max": 1}, {"window_bytes": 0}, {"window_bytes": True},
                {"window_bytes": 1.5}, {"window_bytes": 2**41}):
        with pytest.raises(pbuffer.ConfigurationError):
            Relay(buf, transport, **bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):  # what earlier versions raised, still caught
            Relay(buf, transport, **bad)  # type: ignore[arg-type]


def test_windows_are_sized_to_window_bytes_by_the_last_windows_payloads() -> None:
    """Large payloads make short windows, so the two windows a relay holds stay near window_bytes each; small ones
    go batch_size at a time again. The first window is short (no size is known yet); a window that follows a jump
    in size still holds at most batch_size (the relay sizes a window by the one before it). Every message goes
    once, in order."""
    buf = pbuffer.open("memory://")
    sizes = [10] * 300 + [2_000] * 200 + [10] * 300
    saved = buf.save_many([bytes(size) for size in sizes], subject="a.b")
    stream, windows = drain_recording_windows(buf, batch_size=100, window_bytes=10_000)
    assert stream.stored == [m.id for m in saved] and len(buf) == 0
    assert len(windows[0]) == 16, "a relay's first window, read before it knows any size, is a short one"
    assert max(len(window) for window in windows) == 100
    after_large = [window for before, window in pairwise(windows) if min(before) == 2_000]
    assert after_large and all(sum(window) <= 10_000 for window in after_large), windows
    assert len(windows[-2]) == 100, "windows of small payloads did not grow back to batch_size"


def test_a_message_larger_than_window_bytes_still_goes_one_at_a_time() -> None:
    """window_bytes below a single payload (1 MiB here) never makes an empty window: one message a window."""
    buf = pbuffer.open("memory://")
    saved = buf.save_many([bytes(1 << 20)] * 20, subject="a.b")
    stream, windows = drain_recording_windows(buf, batch_size=100, window_bytes=1000)
    assert stream.stored == [m.id for m in saved] and len(buf) == 0
    assert [len(window) for window in windows] == [16, 1, 1, 1, 1]


class SlowTransport(MockTransport):
    """A MockTransport that takes ``seconds`` to publish each window, so time passes while a relay reads ahead."""

    def __init__(self, handler: Callable[[Message], PublishResult], seconds: float) -> None:
        super().__init__(handler)
        self.seconds = seconds

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        await asyncio.sleep(self.seconds)
        return await super().publish(messages)


def test_a_hold_that_ends_while_windows_are_read_ahead_keeps_the_subjects_order() -> None:
    """A subject held back after a failure is passed over while the relay reads on, window after window. Its hold
    ends in the middle of that (a 25-50 ms backoff; 60 windows of 10 ms each): its later messages must not go out
    before its oldest, which the earlier windows passed over. Found by the stuck-subject test against a server
    (the stream created while the relay read ahead): the read behind a window let the subject in again."""
    buf = pbuffer.open("memory://")
    saved = buf.save_many([pbuffer.Outgoing(b"%d" % i, subject="a.x" if i % 10 == 0 else "b.x") for i in range(600)])
    stream = FakeStream()
    transport = SlowTransport(fail_once(stream, {saved[0].id}), 0.01)

    async def scenario() -> None:
        async with Relay(buf, transport, batch_size=10, backoff_initial=0.05, backoff_max=0.05) as relay:
            await relay.drain()

    run(scenario())
    assert sorted(stream.stored) == sorted(m.id for m in saved) and len(buf) == 0
    for subject in ("a.x", "b.x"):
        order = [i for i in stream.stored if i in {m.id for m in saved if m.subject == subject}]
        assert order == [m.id for m in saved if m.subject == subject], f"{subject} out of order"


class SubjectRecorder(MockTransport):
    """A MockTransport that keeps the subjects of every window it was handed."""

    def __init__(self, handler: Callable[[Message], PublishResult]) -> None:
        super().__init__(handler)
        self.windows: list[list[str]] = []

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        self.windows.append([m.subject for m in messages])
        return await super().publish(messages)


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_subject_that_failed_is_tried_again_with_its_oldest_message_alone(backend: str, tmp_path: Path) -> None:
    """A subject no stream covers is retried each time its hold runs out. Each retry must publish its oldest
    message alone (a probe), not a whole window of its messages that all fail; once a probe is acknowledged, the
    rest of the subject goes out, each message once, in order, behind it. The stuck-subject benchmark retried
    2,516 messages in a 50,000-message drain before the probe, 20 after."""
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'b.db'}"
    buf = pbuffer.open(url)
    stuck = buf.save_many([b"s%d" % i for i in range(300)], subject="a.stuck")
    healthy = buf.save_many([b"h%d" % i for i in range(3000)], subject="b.ok")
    stream = FakeStream()
    failures: list[str] = []

    def handler(message: Message) -> PublishResult:
        if message.subject == "a.stuck" and len(failures) < 40:
            failures.append(message.id)
            return PublishResult.failed("no responders", transient=True, no_stream=True)
        return stream.accept(message)

    transport = SubjectRecorder(handler)

    async def scenario() -> None:
        async with Relay(buf, transport, batch_size=50, backoff_initial=0.001, backoff_max=0.002) as relay:
            await relay.drain()

    run(scenario())
    assert sorted(stream.stored) == sorted(m.id for m in stuck + healthy) and len(buf) == 0
    assert [i for i in stream.stored if i in {m.id for m in stuck}] == [m.id for m in stuck]
    # The first window (16 messages, all of the subject) failed whole: nothing told the relay yet. Every retry
    # after it was the subject's oldest message alone, until one was acknowledged.
    tried = [window.count("a.stuck") for window in transport.windows]
    assert tried[0] == 16 and failures[:16] == [m.id for m in stuck[:16]]
    assert failures[16:] == [stuck[0].id] * 24
    assert max(tried[1:list(accumulate(tried)).index(40) + 1]) == 1


def open_buffer(backend: str, tmp_path: Path) -> pbuffer.Buffer:
    return pbuffer.open("memory://" if backend == "memory" else f"sqlite:///{tmp_path / 'b.db'}")


def stream_order(stream: FakeStream, saved: list[Message]) -> list[int]:
    """The stream's messages as their places in ``saved``."""
    place = {m.id: i for i, m in enumerate(saved)}
    return [place[i] for i in stream.stored]


@pytest.mark.parametrize("strict_order", [False, True])
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_relay_stopped_while_its_window_fails_gives_its_claims_back(backend: str, strict_order: bool,
                                                                      tmp_path: Path) -> None:
    """An application shuts its relay down during an outage (stop() while a window times out) and starts a new
    one. The first relay's claims on the failed window and on the window it read ahead must end with it: the new
    relay (another owner) would pass over them and publish the subject's later messages first, the older ones
    only once the old lease ran out (found by trying to break the relay)."""
    buf = open_buffer(backend, tmp_path)
    saved = buf.save_many([b"%d" % i for i in range(40)], subject="orders.a")
    relays: list[Relay] = []

    def outage(message: Message) -> PublishResult:
        relays[0].stop()  # the shutdown arrives while NATS does not answer
        return PublishResult.failed("no ack in time", transient=True, kind="timeout")

    stream = FakeStream()

    async def scenario() -> None:
        relays.append(Relay(buf, MockTransport(outage), batch_size=10, lease=30.0, strict_order=strict_order))
        await relays[0].drain()
        await relays[0].close()
        assert buf.claim_stats().held == 0  # type: ignore[union-attr]
        async with Relay(buf, MockTransport(stream.accept), batch_size=10, lease=30.0) as second:
            await asyncio.wait_for(second.drain(), 10)

    run(scenario())
    assert stream_order(stream, saved) == list(range(40)) and len(buf) == 0


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
def test_a_cancelled_relay_gives_its_claims_back(backend: str, tmp_path: Path) -> None:
    """A relay's task cancelled while a window awaits its acks (and the next one is read ahead): what it read and
    did not publish goes back, so a relay started next goes on from the oldest message, in order, each message
    stored once (the cancelled window's are stored again as duplicates, which the stream drops)."""
    buf = open_buffer(backend, tmp_path)
    saved = buf.save_many([b"%d" % i for i in range(60)], subject="orders.a")
    stream = FakeStream()
    first_window = asyncio.Event()

    async def slow(message: Message) -> PublishResult:
        first_window.set()
        await asyncio.sleep(0.05)
        return stream.accept(message)

    async def scenario() -> None:
        relay = Relay(buf, MockTransport(slow), batch_size=10, lease=30.0)
        task = asyncio.ensure_future(relay.run())
        await first_window.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert buf.claim_stats().held == 0  # type: ignore[union-attr]
        async with Relay(buf, MockTransport(stream.accept), batch_size=10, lease=30.0) as second:
            await asyncio.wait_for(second.drain(), 10)

    run(scenario())
    assert stream_order(stream, saved) == list(range(60)) and len(buf) == 0


def test_send_returns_once_its_message_is_acknowledged_while_an_older_subject_is_stuck() -> None:
    """send() with an older message of a subject no stream covers in the buffer: its own message is published
    and deleted, so it must return it. It raised PublishError saying the message "stays in the buffer" (it waited
    for the whole buffer to drain), and a caller resending on that error stores the payload twice."""
    buf = pbuffer.open("memory://")
    stuck = buf.save(b"old", subject="nostream.x")
    stream = FakeStream()

    def handler(message: Message) -> PublishResult:
        if message.subject == "nostream.x":
            return PublishResult.failed("no stream covers nostream.x", transient=True, no_stream=True)
        return stream.accept(message)

    sent = run(pbuffer.send(buf, MockTransport(handler), b"order", subject="orders.a", timeout=10))
    assert isinstance(sent, Message) and stream.stored == [sent.id]
    assert [m.id for m in buf.get_all()] == [stuck.id] and buf.claim_stats().held == 0  # type: ignore[union-attr]


def test_a_send_that_timed_out_gives_its_claim_back() -> None:
    """send() during an outage times out; its message stays in the buffer, unclaimed, so the next send() of the
    subject publishes it first, then its own."""
    buf = pbuffer.open("memory://")
    stream = FakeStream()
    up = False

    def handler(message: Message) -> PublishResult:
        return stream.accept(message) if up else PublishResult.failed("no ack in time", transient=True)

    transport = MockTransport(handler)
    with pytest.raises(pbuffer.PublishError, match="stays in the buffer"):
        run(pbuffer.send(buf, transport, b"first", subject="orders.a", timeout=0.3))
    first = buf.get()
    assert first is not None and buf.claim_stats().held == 0  # type: ignore[union-attr]
    up = True
    second = run(pbuffer.send(buf, transport, b"second", subject="orders.a", timeout=10))
    assert stream.stored == [first.id, second.id] and len(buf) == 0  # type: ignore[attr-defined]


def test_a_relay_cancelled_while_its_deletes_run_gives_its_claims_back(tmp_path: Path) -> None:
    """Cancelled while it awaits a window's deletes (held in the buffer's thread here: sqlite's calls run in a
    thread pool): the window after it was published and the one after that read ahead; their claims must end with
    the relay all the same."""
    buf = open_buffer("sqlite", tmp_path)
    saved = buf.save_many([b"%d" % i for i in range(60)], subject="orders.a")
    deleting, proceed = threading.Event(), threading.Event()
    delete_many = buf.delete_many

    def held_delete(message_ids: Any) -> int:
        deleting.set()
        proceed.wait(10)
        return delete_many(message_ids)

    buf.delete_many = held_delete  # type: ignore[method-assign]
    stream = FakeStream()

    async def scenario() -> None:
        relay = Relay(buf, MockTransport(stream.accept), batch_size=10, lease=30.0)
        task = asyncio.ensure_future(relay.run())
        await asyncio.get_running_loop().run_in_executor(None, deleting.wait, 10)
        await asyncio.sleep(0.05)  # the relay goes on to the next window, then awaits the delete
        task.cancel()
        proceed.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert buf.claim_stats().held == 0  # type: ignore[union-attr]
        buf.delete_many = delete_many  # type: ignore[method-assign]
        async with Relay(buf, MockTransport(stream.accept), batch_size=10, lease=30.0) as second:
            await asyncio.wait_for(second.drain(), 10)

    run(scenario())
    assert stream_order(stream, saved) == list(range(60)) and len(buf) == 0
