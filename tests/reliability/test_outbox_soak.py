"""Soak of the outbox on each server database: transactions that commit or roll back at random, late commits
everywhere, one relay running throughout into a real nats-server.

8 threads each save messages in their own transactions (1 to 4 messages each), and a third of the transactions
roll back. The stream must end up holding exactly the committed messages, each once, and each thread's committed
messages in the order it committed them. Sequence numbers are taken at insert while transactions commit in any
order, so the relay keeps meeting rows that commit behind rows it already published: none may be skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from backend_urls import POSTGRES
from nats_support import add_stream
from outbox_support import HANG_GUARD, HeldSave, RelayThread, caller_engine, open_buffer, stream_ids, wait_until

from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.transport import MockTransport, PublishResult

from .faults_support import require_nats_server

pytestmark = pytest.mark.slow

THREADS = 8
# Messages saved in all (committed and rolled back); PBUFFER_OUTBOX_SOAK overrides it (the figure: 20,000).
MESSAGES = int(os.environ.get("PBUFFER_OUTBOX_SOAK", "20000"))


def test_outbox_soak(server_store_url: str, server: NatsServer) -> None:
    require_nats_server()
    add_stream(server, "SOAK", ["soak.>"])
    buf = open_buffer(server_store_url)
    engine = caller_engine(server_store_url)
    committed: list[list[str]] = [[] for _ in range(THREADS)]
    rolled_back: list[set[str]] = [set() for _ in range(THREADS)]
    errors: list[BaseException] = []
    relay = RelayThread(buf, server, batch_size=100, poll_interval=0.2)

    def worker(n: int) -> None:
        rng = random.Random(n)
        left = MESSAGES // THREADS
        try:
            while left > 0:
                count = min(left, rng.randint(1, 4))
                left -= count
                with engine.connect() as conn:
                    items = [f"{n}:{len(committed[n])}:{i}".encode() for i in range(count)]
                    if count == 1:
                        ids = [buf.save(items[0], subject=f"soak.{n}", connection=conn).id]
                    else:
                        ids = [m.id for m in buf.save_many(items, subject=f"soak.{n}", connection=conn)]
                    if rng.random() < 1 / 3:
                        conn.rollback()
                        rolled_back[n].update(ids)
                    else:
                        conn.commit()
                        committed[n].extend(ids)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors[:3]
        total = sum(len(ids) for ids in committed)
        wait_until(lambda: len(buf) == 0, "the relay to drain the buffer")
    finally:
        relay.stop()
    try:
        in_stream = stream_ids(server, "SOAK")
        assert len(in_stream) == total == len(set(in_stream)), "a message is missing or in the stream twice"
        assert set(in_stream) == {i for ids in committed for i in ids}
        assert not set(in_stream) & set().union(*rolled_back), "a rolled back message was published"
        position = {message_id: index for index, message_id in enumerate(in_stream)}
        for ids in committed:
            assert [position[i] for i in ids] == sorted(position[i] for i in ids), "a thread's order changed"
        stats = buf.stats()
        assert (stats.pending, stats.pending_bytes) == (0, 0)
        # Rolled back saves were never counted: every committed one was counted once and removed once.
        assert sum(s.pending for s in buf.subject_stats().values()) == 0
    finally:
        buf.close()
        engine.dispose()


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "outbox_orders"


def test_order_service_killed_at_random_moments(server: NatsServer) -> None:
    """kill -9 the example order service 20 times while it commits orders with their events (every 5th declined),
    the relay (a separate process) running throughout: every committed order's event is in the stream exactly once,
    and no event of an order that did not commit."""
    require_nats_server()
    url = POSTGRES.empty()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS orders")
    add_stream(server, "ORDERS", ["orders.>"])
    rng = random.Random(int(os.environ.get("PBUFFER_CRASH_SEED", "20261201")))
    relay = subprocess.Popen([sys.executable, str(EXAMPLE / "relay.py"), url, server.url, "--poll", "0.5"])
    printed: list[str] = []
    try:
        for _ in range(20):
            app = subprocess.Popen([sys.executable, str(EXAMPLE / "app.py"), url, "place", "1000000",
                                    "--fail-every", "5"], stdout=subprocess.PIPE, text=True)
            assert app.stdout is not None
            first = app.stdout.readline()  # it is placing orders
            assert first, "the order service did not start"
            time.sleep(rng.uniform(0.01, 0.4))  # a random point of its work
            os.kill(app.pid, signal.SIGKILL)
            out, _ = app.communicate()
            lines = [first, *out.splitlines()]
            printed.extend(r["event_id"] for r in map(json.loads, filter(None, lines)) if r["committed"])
        with engine.connect() as conn:
            committed = [row[0] for row in conn.exec_driver_sql(
                "SELECT event_id FROM orders WHERE event_id IS NOT NULL ORDER BY id")]
            orphans = conn.exec_driver_sql("SELECT COUNT(*) FROM orders WHERE event_id IS NULL").scalar_one()
        assert committed and orphans == 0  # an order and its event id commit together
        assert set(printed) <= set(committed)  # (the last commits may have been killed before their line)
        wait_until(lambda: len(stream_ids(server, "ORDERS")) >= len(committed), "the relay to publish every event")
        in_stream = stream_ids(server, "ORDERS")
        assert len(in_stream) == len(set(in_stream)) == len(committed)
        assert set(in_stream) == set(committed)
    finally:
        relay.terminate()
        relay.wait(60)
        # The application's table: the next test on this database (pytest-alembic's model check) must not meet it.
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS orders")
        engine.dispose()


HOLD_SECONDS = 10.0


@pytest.mark.parametrize("limits", [{}, {"max_messages": 2000, "overflow": "drop_oldest"}],
                         ids=["unlimited", "drop_oldest"])
def test_a_transaction_held_open_10_s_blocks_neither_saves_nor_the_relay(server_store_url: str,
                                                                         limits: dict[str, Any]) -> None:
    """The issue's test: a caller's transaction holds an outbox save open for 10 s while 4 threads save (plain and
    outbox saves) and a relay runs throughout. Before the caller commits, every producer has stopped on its own
    (none waited for the open transaction) and the relay has published everything they committed, each once, in
    each producer's order; then the held message is published too. With drop_oldest the buffer starts full, so
    the held save and the others drop messages while the transaction is open."""
    buf = open_buffer(server_store_url, **limits)
    engine = caller_engine(server_store_url)
    if limits:
        buf.save_many([b"old"] * 2000, subject="hold.old")
    transport = MockTransport(lambda message: PublishResult.stored("HOLD", 1))
    relay = Relay(buf, transport, batch_size=100, poll_interval=0.2)
    loop = asyncio.new_event_loop()
    relay_thread = threading.Thread(target=lambda: loop.run_until_complete(relay.run()), name="relay")
    relay_thread.start()
    stop = threading.Event()
    saved: list[list[str]] = [[] for _ in range(4)]
    errors: list[BaseException] = []
    holder = HeldSave(buf, engine, "hold.s")

    def producer(n: int) -> None:
        try:
            while not stop.is_set():
                if len(saved[n]) % 2:
                    saved[n].append(buf.save(f"{n}".encode(), subject=f"hold.{n}").id)
                else:
                    with engine.connect() as conn:
                        saved[n].append(buf.save(f"{n}".encode(), subject=f"hold.{n}", connection=conn).id)
                        conn.commit()
        except BaseException as exc:
            errors.append(exc)

    producers = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    try:
        holder.start()
        started = time.monotonic()
        for thread in producers:
            thread.start()
        time.sleep(max(0.0, HOLD_SECONDS - (time.monotonic() - started)))
        stop.set()
        for thread in producers:
            thread.join(HANG_GUARD)
        assert not any(thread.is_alive() for thread in producers), "a save waited for the open transaction"
        assert not errors, errors[:3]
        ours = {i for ids in saved for i in ids}

        def published_or_dropped() -> bool:
            # Everything committed is published or (drop_oldest) dropped: nothing of the producers' is left.
            return not {m.id for m in buf.get_all()} & ours

        wait_until(published_or_dropped, "the relay to publish what the producers committed")
        assert holder.is_open(), "the held transaction ended early"
        published = [m.id for m in transport.published if m.id in ours]
        assert len(published) == len(set(published)), "a message was published twice"
        position = {message_id: index for index, message_id in enumerate(published)}
        for ids in saved:
            mine = [position[i] for i in ids if i in position]
            assert mine == sorted(mine), "a producer's order changed"
        if not limits:
            assert set(published) == ours
        held = holder.commit()
        wait_until(lambda: held.id in {m.id for m in transport.published}, "the held message")
        assert sum(len(ids) for ids in saved) > 100  # the producers did save throughout
    finally:
        stop.set()
        holder.end()
        for thread in producers:
            thread.join(HANG_GUARD)
        loop.call_soon_threadsafe(relay.stop)
        relay_thread.join(HANG_GUARD)
        loop.close()
        buf.close()
        engine.dispose()
