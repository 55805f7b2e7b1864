"""The transactional outbox: ``save(..., connection=conn)`` writes in the caller's own transaction.

What users rely on: the message exists exactly when the caller's transaction commits (never published, never
counted after a rollback); pbuffer never commits, rolls back or closes the caller's connection; another database
(or a memory buffer) is refused before anything is written; listeners wake at the commit, not the save; limits
work inside the transaction (``block`` refuses at once); an open outbox transaction blocks neither other saves nor
a relay on PostgreSQL and MariaDB; a late commit (a row with an older sequence number committed after newer ones
were published) is still published, once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from backend_urls import POSTGRES
from nats_support import add_stream
from outbox_support import HANG_GUARD, HeldSave, RelayThread, caller_engine, open_buffer, stream_ids, wait_until
from sqlalchemy.orm import Session

import pbuffer
from pbuffer import Buffer
from pbuffer.errors import BackendError, BufferFullError, ConfigurationError, ValidationError
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.transport import MockTransport, PublishResult


@pytest.fixture
def outbox(sql_store_url: str) -> Iterator[tuple[Buffer, sa.Engine]]:
    buf = open_buffer(sql_store_url)
    engine = caller_engine(sql_store_url)
    yield buf, engine
    buf.close()
    engine.dispose()


def test_commit_makes_messages_pending_rollback_leaves_nothing(outbox: tuple[Buffer, sa.Engine]) -> None:
    buf, engine = outbox
    with engine.connect() as conn:
        first = buf.save(b"order 1", subject="orders.created", headers={"k": "v"}, connection=conn)
        batch = buf.save_many([b"a", b"b", b"c"], subject="orders.lines", connection=conn)
        assert len(buf) == 0  # not committed yet: invisible to the buffer's own connections
        assert conn.in_transaction() and not conn.closed  # pbuffer neither committed nor closed it
        conn.commit()
    with Session(engine) as session:
        buf.save(b"rolled back", subject="orders.created", connection=session)
        buf.save_many([b"x", b"y"], subject="orders.lines", connection=session)
        session.rollback()
    pending = buf.get_all()
    assert [m.id for m in pending] == [first.id, *(m.id for m in batch)]  # in insert order, save_many consecutive
    assert pending[0].headers == {"k": "v"} and pending[0].payload == b"order 1"
    stats = buf.stats()
    assert (stats.pending, stats.pending_bytes) == (4, 10)
    assert {s: v.pending for s, v in buf.subject_stats().items()} == {"orders.created": 1, "orders.lines": 3}


def test_session_commit_and_counters_after_the_relay_deletes(outbox: tuple[Buffer, sa.Engine]) -> None:
    buf, engine = outbox
    with Session(engine) as session, session.begin():
        saved = [buf.save(f"m{i}".encode(), subject="s.one", connection=session) for i in range(5)]
    assert [m.id for m in buf.get_all()] == [m.id for m in saved]
    assert buf.delete_many([m.id for m in saved]) == 5
    stats = buf.stats()
    assert (stats.pending, stats.pending_bytes) == (0, 0)
    # A drained subject stays listed, at zero, as after plain saves; the five outbox saves counted as deleted.
    assert buf.subject_stats() == {"s.one": pbuffer.SubjectStats(0, 0, 0, 0, 0, 0, deleted=5)}


def test_outbox_counters_rows_are_folded_back_on_servers(server_store_url: str) -> None:
    """Each outbox save counts into a counters row of its own (so no other writer waits on it); relays' deletes
    fold committed ones back, so the counters table does not grow with every outbox save."""
    buf = open_buffer(server_store_url)
    engine = caller_engine(server_store_url)
    try:
        for i in range(30):
            with engine.begin() as conn:
                buf.save(f"{i}".encode(), subject=f"fold.{i % 3}", connection=conn)
        with engine.connect() as conn:
            outbox_rows = conn.exec_driver_sql(
                "SELECT COUNT(*) FROM pbuffer_counters_0005 WHERE shard >= 16").scalar_one()
        assert outbox_rows == 30
        assert buf.delete_many([m.id for m in buf.get_all()]) == 30
        with engine.connect() as conn:
            left = conn.exec_driver_sql("SELECT COUNT(*) FROM pbuffer_counters_0005 WHERE shard >= 16").scalar_one()
        assert left == 0
        assert buf.stats().pending == 0
        assert set(buf.subject_stats()) == {"fold.0", "fold.1", "fold.2"}
    finally:
        buf.close()
        engine.dispose()


def test_listeners_wake_at_commit_never_at_save_nor_rollback(outbox: tuple[Buffer, sa.Engine]) -> None:
    buf, engine = outbox
    woken: list[int] = []
    buf.add_listener(lambda: woken.append(len(buf)))
    with Session(engine) as session:
        buf.save(b"x", subject="w.s", connection=session)
        buf.save(b"y", subject="w.s", connection=session)
        assert woken == []
        session.rollback()
    assert woken == []
    with Session(engine) as session:
        buf.save(b"x", subject="w.s", connection=session)
        buf.save(b"y", subject="w.s", connection=session)
        assert woken == []
        session.commit()
    # Once per transaction, after the COMMIT: the listener already sees both messages.
    assert woken[:1] == [2]
    with engine.connect() as conn:
        buf.save(b"z", subject="w.s", connection=conn)
        assert len(woken) <= 1 or buf.url.get_backend_name() == "postgresql"  # (NOTIFY of the first commit)
        count = len(woken)
        conn.commit()
    assert len(woken) > count


def test_savepoints_neither_wake_listeners_nor_lose_the_wake_up(server_store_url: str) -> None:
    """A Session's savepoint (``begin_nested``) ending is not the caller's commit: releasing one wakes no listener
    (the transaction may still roll back), and rolling one back does not forget the wake-up of saves made
    outside it. (sqlite's default driver commits at a RELEASE that opened the transaction: not run there.)"""
    buf = open_buffer(server_store_url)
    engine = caller_engine(server_store_url)
    woken: list[int] = []
    buf.add_listener(lambda: woken.append(len(buf)))
    try:
        with Session(engine) as session:
            with session.begin_nested():
                buf.save(b"released", subject="sp.s", connection=session)
            assert woken == []  # released, not committed
            session.rollback()
        assert woken == [] and len(buf) == 0
        with Session(engine) as session:
            kept = buf.save(b"kept", subject="sp.s", connection=session)
            nested = session.begin_nested()
            buf.save(b"undone", subject="sp.s", connection=session)
            nested.rollback()
            session.commit()
        assert woken[:1] == [1]  # woken at the commit, and the listener sees the message
        assert [m.id for m in buf.get_all()] == [kept.id]
    finally:
        buf.close()
        engine.dispose()


def test_postgresql_wakes_another_buffer_at_the_commit() -> None:
    """PostgreSQL: a save NOTIFYs in its transaction and a buffer with a listener LISTENs, so a relay elsewhere (here
    another Buffer object, which has its own connections and channel token) wakes at the caller's commit, not at the
    save and not only at its next poll."""
    url = POSTGRES.empty()
    saver, relay_side = open_buffer(url), open_buffer(url)
    engine = caller_engine(url)
    woken = threading.Event()
    relay_side.add_listener(woken.set)
    try:
        # A plain save wakes it once its LISTEN thread is connected (saves before that are not heard: polling's).
        deadline = time.monotonic() + HANG_GUARD
        while not woken.wait(0.2):
            assert time.monotonic() < deadline, "a plain save never woke the other buffer"
            saver.save(b"plain", subject="n.s")
        woken.clear()
        with engine.connect() as conn:
            saver.save(b"x", subject="n.s", connection=conn)
            assert not woken.wait(1.0)  # not at the save
            conn.commit()
        assert woken.wait(HANG_GUARD)
    finally:
        saver.close()
        relay_side.close()
        engine.dispose()


def test_another_database_is_refused_before_anything_is_written(sql_store_url: str, tmp_path: Path) -> None:
    buf = open_buffer(sql_store_url)
    if sql_store_url.startswith("sqlite"):
        other_url = f"sqlite:///{tmp_path / 'other.db'}"
    else:
        # The same server, another database (the admin one the tests made theirs from).
        url = sa.make_url(sql_store_url)
        other_url = url.set(database="test").render_as_string(hide_password=False)
    other = caller_engine(other_url)
    try:
        with other.connect() as conn:
            with pytest.raises(ConfigurationError, match="not on this buffer's database"):
                buf.save(b"x", subject="o.s", connection=conn)
            with pytest.raises(ConfigurationError, match="not on this buffer's database"):
                buf.save_many([b"x"], subject="o.s", connection=conn)
            assert sa.inspect(conn).get_table_names() == [] or "pbuffer_messages_0005" not in (
                sa.inspect(conn).get_table_names()) or conn.exec_driver_sql(
                "SELECT COUNT(*) FROM pbuffer_messages_0005").scalar_one() == 0
            conn.commit()
        assert len(buf) == 0
    finally:
        buf.close()
        other.dispose()


def test_the_server_not_the_url_says_which_database(server_store_url: str) -> None:
    """A URL can name the buffer's database and still connect elsewhere (a driver option in its query string, the
    driver's environment: PGPORT, an option file). The server is asked: such a connection is refused, and the
    message does not land in the other database's buffer; the same server under another name for its host is
    accepted."""
    import uuid

    url = sa.make_url(server_store_url)
    other_name = f"pbuffer_test_other_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {other_name}")
    other_buffer = open_buffer(url.set(database=other_name).render_as_string(hide_password=False))
    buf = open_buffer(server_store_url)
    # The driver's own database option in the query string wins over the URL's database.
    option = "dbname" if url.get_backend_name() == "postgresql" else "database"
    elsewhere = caller_engine(url.update_query_dict({option: other_name}).render_as_string(hide_password=False))
    alias = caller_engine(url.set(host="localhost" if url.host != "localhost" else "127.0.0.1")
                          .render_as_string(hide_password=False))
    try:
        with elsewhere.connect() as conn:
            with pytest.raises(ConfigurationError, match="not on this buffer's database"):
                buf.save(b"x", subject="o.s", connection=conn)
            conn.rollback()
        assert len(other_buffer) == 0 and len(buf) == 0
        with alias.connect() as conn:
            saved = buf.save(b"y", subject="o.s", connection=conn)
            conn.commit()
        assert [m.id for m in buf.get_all()] == [saved.id]
    finally:
        buf.close()
        other_buffer.close()
        elsewhere.dispose()
        alias.dispose()
        with admin.connect() as conn:
            force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {other_name}{force}")
        admin.dispose()


def test_other_family_and_memory_buffers_are_refused(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    memory = pbuffer.open("memory://outbox-test")
    try:
        with engine.connect() as conn:
            with pytest.raises(ConfigurationError, match="cannot save in your transaction"):
                memory.save(b"x", subject="m.s", connection=conn)
            with pytest.raises(ConfigurationError, match="cannot save in your transaction"):
                memory.save_many([b"x"], subject="m.s", connection=conn)
        assert len(memory) == 0
        with pytest.raises(ConfigurationError, match="Connection or ORM Session"):
            pbuffer.open(f"sqlite:///{tmp_path / 'buf.db'}", serialize_writes=False).save(
                b"x", subject="m.s", connection=object())
    finally:
        memory.close()
        engine.dispose()


def test_a_postgresql_connection_for_a_sqlite_buffer_is_refused(tmp_path: Path) -> None:
    buf = open_buffer(f"sqlite:///{tmp_path / 'buf.db'}")
    engine = sa.create_engine(POSTGRES.ensure(), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn, pytest.raises(ConfigurationError, match="postgresql database"):
            buf.save(b"x", subject="o.s", connection=conn)
    finally:
        buf.close()
        engine.dispose()


def test_autocommit_connections_are_refused(outbox: tuple[Buffer, sa.Engine]) -> None:
    buf, engine = outbox
    with engine.connect() as conn:
        auto = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(ConfigurationError, match="AUTOCOMMIT"):
            buf.save(b"x", subject="a.s", connection=auto)
    assert len(buf) == 0


def test_bad_input_raises_before_anything_is_written(outbox: tuple[Buffer, sa.Engine]) -> None:
    buf, engine = outbox
    with engine.connect() as conn:
        buf.save(b"good", subject="v.s", connection=conn)
        with pytest.raises(ValidationError):
            buf.save(b"x", subject="$JS.API.STREAM.PURGE.X", connection=conn)
        with pytest.raises(ValidationError):
            buf.save_many([b"fine", b"bad"], subject="v.s", headers={"bad\nname": "v"}, connection=conn)
        with pytest.raises(TypeError):
            buf.save("not bytes", subject="v.s", connection=conn)  # type: ignore[arg-type]
        conn.commit()  # the caller's transaction is intact: the good message commits alone
    assert [m.payload for m in buf.get_all()] == [b"good"]


def test_limits_reject_and_drop_oldest_work_inside_the_transaction(sql_store_url: str) -> None:
    engine = caller_engine(sql_store_url)
    buf = open_buffer(sql_store_url, max_messages=3, overflow="reject")
    try:
        buf.save_many([b"1", b"2", b"3"], subject="l.s")
        with engine.connect() as conn:
            with pytest.raises(BufferFullError):
                buf.save(b"4", subject="l.s", connection=conn)
            conn.rollback()
        assert len(buf) == 3
    finally:
        buf.close()
    buf = open_buffer(sql_store_url, max_messages=3, overflow="drop_oldest")
    try:
        with engine.connect() as conn:
            buf.save(b"4", subject="l.s", connection=conn)
            conn.rollback()
        if sql_store_url.startswith("sqlite"):  # the drop was the transaction's too: rolled back with it
            assert [m.payload for m in buf.get_all()] == [b"1", b"2", b"3"] and buf.stats().dropped == 0
        else:  # made in a transaction of the buffer's own, committed first (see the next test): it stands
            assert [m.payload for m in buf.get_all()] == [b"2", b"3"] and buf.stats().dropped == 1
        with engine.connect() as conn:
            buf.save_many([b"4", b"5"], subject="l.s", connection=conn)
            conn.commit()
        assert [m.payload for m in buf.get_all()] == [b"3", b"4", b"5"]
        assert buf.stats().dropped == 2 and buf.stats().pending == 3
    finally:
        buf.close()
        engine.dispose()


@pytest.mark.parametrize(("limits", "payload", "dropped"), [
    ({"max_messages": 40}, b"held", 1),
    ({"max_bytes": 400}, b"h" * 35, 4),
], ids=["max_messages", "max_bytes"])
def test_drop_oldest_in_an_open_transaction_holds_only_what_it_drops(server_store_url: str, limits: dict[str, Any],
                                                                     payload: bytes, dropped: int) -> None:
    """PostgreSQL and MariaDB: an outbox save that drops the oldest messages holds none of them while its caller's
    transaction is open (the drop commits on its own first). A relay meanwhile claims the next oldest, in order: the
    messages behind the dropped ones are neither held back until the commit nor passed over."""
    buf = open_buffer(server_store_url, overflow="drop_oldest", **limits)
    engine = caller_engine(server_store_url)
    owner = pbuffer.ids.new_id()
    try:
        saved = buf.save_many([f"message-{i:02d}".encode() for i in range(40)], subject="d.s")  # 10 bytes each
        with engine.connect() as conn:
            held = buf.save(payload, subject="d.s", connection=conn)  # drops the oldest, in the open transaction
            claimed = buf.claim(5, owner=owner, lease=30)
            assert [m.payload for m in claimed] == [m.payload for m in saved[dropped:dropped + 5]]
            assert buf.release([m.id for m in claimed], owner=owner) == 5
            conn.commit()
        assert [m.id for m in buf.get_all()] == [*(m.id for m in saved[dropped:]), held.id]
        assert (buf.stats().pending, buf.stats().dropped) == (41 - dropped, dropped)
    finally:
        buf.close()
        engine.dispose()


def test_a_rolled_back_drop_oldest_save_brings_nothing_back_behind_what_relays_took(server_store_url: str) -> None:
    """PostgreSQL and MariaDB: an outbox save dropped the oldest message in the caller's transaction, holding it
    locked; a relay's claim meanwhile passed it by and took the next ones; the caller rolled back, and the dropped
    message came back, older than everything the relay had published (m1..m4, then m0: found by trying to break
    it). The drop now commits on its own, before the caller's rows: a rollback undoes the caller's rows only."""
    buf = open_buffer(server_store_url, max_messages=5, overflow="drop_oldest")
    engine = caller_engine(server_store_url)
    try:
        saved = buf.save_many([b"m%d" % i for i in range(5)], subject="d.s")
        with engine.connect() as conn:
            buf.save(b"rolled back", subject="d.s", connection=conn)
            claimed = buf.claim(10, owner=pbuffer.ids.new_id(), lease=30)
            conn.rollback()
        assert [m.id for m in claimed] == [m.id for m in saved[1:]]
        assert [m.id for m in buf.get_all()] == [m.id for m in saved[1:]], "a message came back behind the claim"
        assert (buf.stats().pending, buf.stats().dropped) == (4, 1)
    finally:
        buf.close()
        engine.dispose()


def test_block_cannot_wait_inside_the_callers_transaction(sql_store_url: str) -> None:
    engine = caller_engine(sql_store_url)
    buf = open_buffer(sql_store_url, max_messages=1, overflow="block", block_timeout=30)
    try:
        buf.save(b"1", subject="b.s")
        started = time.monotonic()
        with engine.connect() as conn, pytest.raises(BufferFullError, match="cannot wait inside your transaction"):
            buf.save(b"2", subject="b.s", connection=conn)
        assert time.monotonic() - started < 25  # refused, not after waiting out block_timeout
        assert len(buf) == 1
    finally:
        buf.close()
        engine.dispose()


def test_sqlite_one_writer_mode_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'buf.db'}"
    buf = pbuffer.open(url, serialize_writes=True)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            with pytest.raises(ConfigurationError, match="one-writer mode"):
                buf.save(b"x", subject="s.s", connection=conn)
            conn.commit()
        assert len(buf) == 0
    finally:
        buf.close()
        engine.dispose()


def test_sqlite_an_open_outbox_transaction_holds_the_write_lock(tmp_path: Path) -> None:
    """sqlite has one writer: while the caller's transaction is open, other saves wait busy_timeout, then fail
    with a clear error having written nothing; after the caller commits, saves go on."""
    url = f"sqlite:///{tmp_path / 'buf.db'}"
    buf = open_buffer(url, busy_timeout=0.2)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            buf.save(b"mine", subject="s.s", connection=conn)
            with pytest.raises(BackendError, match="locked past the busy timeout"):
                buf.save(b"other", subject="s.s")
            conn.commit()
        buf.save(b"after", subject="s.s")
        assert [m.payload for m in buf.get_all()] == [b"mine", b"after"]
        assert buf.stats().pending == 2
    finally:
        buf.close()
        engine.dispose()


def test_sqlite_outbox_rows_are_counted_and_folded_by_later_saves(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'buf.db'}"
    buf = open_buffer(url)
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        for i in range(50):
            with engine.begin() as conn:
                buf.save(f"{i}".encode(), subject=f"t.{i % 2}", connection=conn)
        buf.save_many([b"p"] * 2000, subject="t.0")  # a plain save folds the tail
        assert buf.stats().pending == 2050
        assert {s: v.pending for s, v in buf.subject_stats().items()} == {"t.0": 2025, "t.1": 25}
        assert buf.delete_many([m.id for m in buf.get_all(60)]) == 60
        assert buf.stats().pending == 1990 == len(buf)
    finally:
        buf.close()
        engine.dispose()


def _accept(message: Any) -> PublishResult:
    return PublishResult.stored("S", 1)


@pytest.mark.parametrize("limits", [{}, {"max_messages": 1_000_000}], ids=["unlimited", "limited"])
def test_an_open_outbox_transaction_blocks_neither_saves_nor_the_relay(server_store_url: str,
                                                                       limits: dict[str, Any]) -> None:
    """PostgreSQL and MariaDB: while a caller's transaction holds an outbox save open, other threads save on the
    same subject and a relay drains everything committed, to the end; then the caller commits and its message is
    published too."""
    buf = open_buffer(server_store_url, **limits)
    engine = caller_engine(server_store_url)
    holder = HeldSave(buf, engine, "busy.s")
    try:
        holder.start()
        saved: list[str] = []

        def producer(n: int) -> None:
            for i in range(50):
                saved.append(buf.save(f"{n}-{i}".encode(), subject="busy.s").id)
            with engine.connect() as conn:  # other outbox transactions go on too
                saved.append(buf.save(f"{n}-outbox".encode(), subject="busy.s", connection=conn).id)
                conn.commit()

        producers = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
        for thread in producers:
            thread.start()
        for thread in producers:
            thread.join(HANG_GUARD)
        assert not any(thread.is_alive() for thread in producers), "a save waited for the open transaction"
        transport = MockTransport(_accept)
        relay = Relay(buf, transport, batch_size=20)
        stats = asyncio.run(asyncio.wait_for(relay.drain(), HANG_GUARD))
        assert stats.published == 204 and len(buf) == 0  # everything committed, while the holder is still open
        assert holder.is_open()
        held = holder.commit()
        stats = asyncio.run(asyncio.wait_for(Relay(buf, transport).drain(), HANG_GUARD))
        assert stats.published == 1 and transport.published[-1].id == held.id
        assert sorted(m.id for m in transport.published) == sorted([*saved, held.id])
        assert buf.stats().pending == 0
    finally:
        holder.end()
        buf.close()
        engine.dispose()


def test_deleting_nearly_the_whole_table_does_not_wait_for_an_open_transaction(server_store_url: str) -> None:
    """A relay that keeps up deletes batches covering nearly every row of a small table; on MariaDB the optimizer
    then scans the table instead of looking the rows up, and a scan waits for the open outbox transaction's row
    (until innodb_lock_wait_timeout: 50 s, then an error). Claims and deletes must not wait for it."""
    buf = open_buffer(server_store_url)
    engine = caller_engine(server_store_url)
    owner = pbuffer.ids.new_id()
    try:
        with engine.connect() as conn:
            held = buf.save(b"held", subject="n.s", connection=conn)
            committed = buf.save_many([f"{i}".encode() for i in range(20)], subject="n.s")
            claimed = buf.claim(100, owner=owner, lease=30)
            assert [m.id for m in claimed] == [m.id for m in committed]
            assert buf.delete_many([m.id for m in claimed]) == 20
            again = buf.save_many([b"a", b"b", b"c"], subject="n.s")
            assert buf.delete_many([m.id for m in again]) == 3
            conn.commit()
        assert [m.id for m in buf.get_all()] == [held.id]
        assert buf.stats().pending == 1
    finally:
        buf.close()
        engine.dispose()


def test_a_claim_behind_a_late_commit_claims_nothing(server_store_url: str) -> None:
    """The read-ahead a relay does (claim behind the last message of its window) must not pass a message that
    committed late, or the producer's next message would be published before it: that claim returns nothing,
    and a claim from the oldest returns the late message first."""
    buf = open_buffer(server_store_url)
    engine = caller_engine(server_store_url)
    owner = pbuffer.ids.new_id()
    try:
        with engine.connect() as t1:
            late = buf.save(b"late", subject="c.s", connection=t1)
            window = buf.save_many([b"1", b"2"], subject="c.s")
            assert [m.id for m in buf.claim(2, owner=owner, lease=30)] == [m.id for m in window]
            t1.commit()
        after = buf.save(b"after", subject="c.s")  # the producer's next message, behind the window
        assert buf.claim(10, owner=owner, lease=30, after=window[-1].id) == []
        buf.delete_many([m.id for m in window])
        assert [m.id for m in buf.claim(10, owner=owner, lease=30)] == [late.id, after.id]
    finally:
        buf.close()
        engine.dispose()


def test_a_late_commit_is_never_skipped(server_store_url: str, server: NatsServer) -> None:
    """T1 saves and stays open; T2 saves and commits; the relay publishes T2's messages (reading ahead in small
    windows); T1 commits; its message, older by sequence number than T2's, is published too, once."""
    add_stream(server, "LATE", ["late.>"])
    buf = open_buffer(server_store_url)
    engine = caller_engine(server_store_url)
    relay = RelayThread(buf, server, batch_size=2, poll_interval=0.2)
    try:
        with engine.connect() as t1:
            late = buf.save(b"t1", subject="late.a", connection=t1)
            with engine.connect() as t2:
                early = buf.save_many([f"t2-{i}".encode() for i in range(5)], subject="late.a", connection=t2)
                t2.commit()
            wait_until(lambda: len(stream_ids(server, "LATE")) >= 5, "T2's messages")
            assert stream_ids(server, "LATE") == [m.id for m in early]
            t1.commit()
        wait_until(lambda: len(stream_ids(server, "LATE")) >= 6, "T1's message")
        assert stream_ids(server, "LATE") == [*(m.id for m in early), late.id]
        wait_until(lambda: len(buf) == 0, "the relay's delete")
    finally:
        relay.stop()
        buf.close()
        engine.dispose()


def test_async_session_and_connection() -> None:
    """On PostgreSQL (psycopg's async driver; MariaDB's would need another driver package)."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    server_store_url = POSTGRES.empty()
    buf = open_buffer(server_store_url)
    aio = pbuffer.AsyncBuffer(buf)

    async def scenario() -> None:
        engine = create_async_engine(server_store_url, poolclass=sa.pool.NullPool)
        try:
            async with AsyncSession(engine) as session:
                await aio.save(b"rolled back", subject="a.s", connection=session)
                await session.rollback()
            async with AsyncSession(engine) as session:
                first = await aio.save(b"one", subject="a.s", connection=session)
                assert await aio.count() == 0
                await session.commit()
            async with engine.connect() as conn:
                more = await aio.save_many([b"two", b"three"], subject="a.s", connection=conn)
                await conn.commit()
            assert [m.id for m in await aio.get_all()] == [first.id, *(m.id for m in more)]
            with pytest.raises(ConfigurationError, match="AsyncConnection or AsyncSession"):
                await aio.save(b"x", subject="a.s", connection=object())
        finally:
            await engine.dispose()
            await aio.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------- the example application

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "outbox_orders"


def test_the_example_order_service_end_to_end(server: NatsServer) -> None:
    """examples/outbox_orders on PostgreSQL, the relay a separate process: committed orders' events are published
    once each, declined (rolled back) orders' never; alembic autogenerate with pbuffer's filter sees no drift."""
    import json
    import subprocess
    import sys

    url = POSTGRES.empty()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS orders")
    add_stream(server, "ORDERS", ["orders.>"])
    relay = subprocess.Popen([sys.executable, str(EXAMPLE / "relay.py"), url, server.url, "--poll", "1"],
                             stdout=subprocess.PIPE, text=True)
    try:
        placed = subprocess.run([sys.executable, str(EXAMPLE / "app.py"), url, "place", "30", "--fail-every", "4"],
                                capture_output=True, text=True, timeout=HANG_GUARD, check=True)
        results = [json.loads(line) for line in placed.stdout.splitlines()]
        committed = [r["event_id"] for r in results if r["committed"]]
        assert len(results) == 30 and len(committed) == 23
        wait_until(lambda: len(stream_ids(server, "ORDERS")) >= len(committed), "the relay to publish the events")
        assert stream_ids(server, "ORDERS") == committed  # each once, in commit order, no declined order's
        with engine.connect() as conn:
            in_database = [row[0] for row in conn.exec_driver_sql("SELECT event_id FROM orders ORDER BY id")]
        assert in_database == committed
        sys.path.insert(0, str(EXAMPLE))
        try:
            from app import schema_drift  # type: ignore[import-not-found]
        finally:
            sys.path.remove(str(EXAMPLE))
        assert schema_drift(url) == []  # pbuffer's tables are left alone by the application's autogenerate
    finally:
        relay.terminate()
        assert relay.wait(HANG_GUARD) == 0
        # The application's table: the next test on this database (pytest-alembic's model check) must not meet it.
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS orders")
        engine.dispose()


def test_drop_oldest_on_a_small_table_does_not_wait_for_an_open_transaction(server_store_url: str) -> None:
    """A save that drops every other message of a small buffer while an outbox transaction holds its new row open:
    on MariaDB a delete of many rows by primary key scans a small table whole and would wait for that row (up to
    innodb_lock_wait_timeout); each row is deleted by a statement of its own instead."""
    buf = open_buffer(server_store_url, max_messages=20, overflow="drop_oldest")
    engine = caller_engine(server_store_url)
    try:
        with engine.connect() as conn:
            buf.save(b"held", subject="small.held", connection=conn)  # uncommitted until the end
            buf.save_many([b"old"] * 20, subject="small.s")
            done: list[list[bytes]] = []
            saver = threading.Thread(target=lambda: done.append(
                [m.payload for m in buf.save_many([b"new"] * 20, subject="small.s")]))
            saver.start()
            saver.join(20)
            assert done, "a drop_oldest save waited for the open outbox transaction"
            # The open row is not pending yet: 40 committed over a limit of 20, the 20 oldest dropped.
            assert [m.payload for m in buf.get_all()] == [b"new"] * 20 and buf.stats().dropped == 20
            conn.commit()
        assert sorted(m.payload for m in buf.get_all()) == [b"held", *([b"new"] * 20)]
    finally:
        buf.close()
        engine.dispose()
