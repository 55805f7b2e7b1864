"""A server database's connection lost between the COMMIT and its answer: the outcome is unknown, and the error
must say so (CommitUnknownError), never "nothing was written" (found by putting a proxy that cuts the connection
right after forwarding a COMMIT between pbuffer and the server: the save raised and was stored)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import pytest
import sqlalchemy as sa

import pbuffer


class CommitCutter:
    """A TCP proxy to ``port`` that, once armed, forwards the next COMMIT to the server (or, ``forward`` false,
    drops it) and then closes both sides without passing the server's answer on."""

    def __init__(self, port: int, marker: bytes) -> None:
        self.target, self.marker = ("127.0.0.1", port), marker
        self.forward = True
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        with suppress(OSError):
            while data := source.recv(65536):
                if upstream and self.armed.is_set() and self.marker in data:
                    if self.forward:
                        sink.sendall(data)
                    self.armed.clear()
                    self.cut.set()
                    break
                sink.sendall(data)
        for each in (source, sink):
            with suppress(OSError):
                each.shutdown(socket.SHUT_RDWR)
            each.close()

    def close(self) -> None:
        self.listener.close()


@contextmanager
def through_a_cutter(url: str) -> Iterator[tuple[CommitCutter, str]]:
    parsed = sa.make_url(url)
    postgres = parsed.get_backend_name() == "postgresql"
    # The COMMIT as each driver sends it: PostgreSQL's simple query (text, NUL), MariaDB's COM_QUERY (0x03, text).
    cutter = CommitCutter(parsed.port or (5432 if postgres else 3306), b"COMMIT\x00" if postgres else b"\x03COMMIT")
    try:
        yield cutter, parsed.set(port=cutter.port).render_as_string(hide_password=False)
    finally:
        cutter.close()


def eventually(condition: object, seconds: float = 10.0) -> bool:
    """Whether ``condition()`` became true within ``seconds`` (the server finishes the COMMIT it was sent)."""
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("call", ["save", "save_many"])
def test_a_save_whose_commit_answer_is_lost_says_its_outcome_is_unknown(server_store_url: str, call: str) -> None:
    with pbuffer.open(server_store_url) as check, through_a_cutter(server_store_url) as (cutter, url):
        with pbuffer.open(url) as buf:
            buf.save(b"warm-up", subject="t.x")  # the connection made and the counters row there
            cutter.armed.set()
            def in_doubt() -> object:
                if call == "save":
                    return buf.save(b"in doubt", subject="t.x")
                return buf.save_many([b"in doubt", b"in doubt too"], subject="t.x")

            with pytest.raises(pbuffer.CommitUnknownError, match="whether the save was written is unknown"):
                in_doubt()
            assert cutter.cut.is_set()
        # The server had the COMMIT: the rows are there. Had the error said "nothing was written", a caller would
        # save them again, under new ids JetStream cannot deduplicate.
        expected = 2 if call == "save" else 3
        assert eventually(lambda: len(check) == expected)
        assert check.stats().pending == expected


def test_a_pop_whose_commit_answer_is_lost_returns_its_message_or_says_the_outcome_is_unknown(
        server_store_url: str) -> None:
    """The server carried the pop's COMMIT out, its answer was lost. PostgreSQL is asked what became of the pop's
    transaction (txid_status): committed, so the message is returned, not lost. MariaDB cannot be asked: the error
    says the outcome is unknown. (A pop raised "nothing was written" here and its message reached no caller.)"""
    postgres = server_store_url.startswith("postgresql")
    with pbuffer.open(server_store_url) as check, through_a_cutter(server_store_url) as (cutter, url):
        check.save_many([b"first", b"second"], subject="t.x")
        with pbuffer.open(url) as buf:
            assert buf.get() is not None  # the connection made
            cutter.armed.set()
            if postgres:
                popped = buf.pop()
                assert popped is not None and popped.payload == b"first"
            else:
                with pytest.raises(pbuffer.CommitUnknownError, match="whether the pop was written is unknown"):
                    buf.pop()
            assert cutter.cut.is_set()
        assert eventually(lambda: [m.payload for m in check.get_all()] == [b"second"])
        assert check.stats().deleted == 1


def test_a_pop_whose_commit_never_arrived_pops_nothing(server_store_url: str) -> None:
    """The COMMIT never reached the server: it rolls the pop back. PostgreSQL says so, and the pop raises a plain
    BackendError ("nothing was popped"), the message still there; MariaDB cannot tell (CommitUnknownError)."""
    postgres = server_store_url.startswith("postgresql")
    with pbuffer.open(server_store_url) as check, through_a_cutter(server_store_url) as (cutter, url):
        check.save(b"first", subject="t.x")
        with pbuffer.open(url) as buf:
            assert buf.get() is not None
            cutter.forward = False
            cutter.armed.set()
            expected = (pbuffer.BackendError, "rolled the pop back: nothing was popped") if postgres else (
                pbuffer.CommitUnknownError, "whether the pop was written is unknown")
            with pytest.raises(expected[0], match=expected[1]) as raised:
                buf.pop()
            assert not postgres or not isinstance(raised.value, pbuffer.CommitUnknownError)
        assert [m.payload for m in check.get_all()] == [b"first"] and check.stats().deleted == 0
