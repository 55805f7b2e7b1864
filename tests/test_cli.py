"""The pbuffer command, driven as a user would: click's runner in-process, and subprocesses for the real thing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import pbuffer
from pbuffer.cli import main
from pbuffer.natsserver import NatsServer

PBUFFER = [sys.executable, "-m", "pbuffer.cli"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'buf.db'}"


@pytest.fixture
def server() -> Iterator[NatsServer]:
    with NatsServer() as running:
        yield running


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def add_stream(server: NatsServer, name: str, subjects: list[str]) -> None:
    import asyncio

    from pbuffer.jetstream import JetStreamTransport

    async def run() -> None:
        transport = await JetStreamTransport.connect(server.url)
        await transport.js.add_stream(name=name, subjects=subjects)
        await transport.close()

    asyncio.run(run())


def test_every_command_has_help_with_an_example() -> None:
    for command in (["demo"], ["inspect"], ["drain"], ["send"], ["requeue"], ["purge"], ["db", "upgrade"],
                    ["db", "downgrade"], ["db", "current"], ["db", "history"], ["db", "check"]):
        code, out = invoke(*command, "--help")
        assert code == 0, command
        assert "Example" in out, command


def test_inspect_lists_safely_and_as_json(url: str) -> None:
    with pbuffer.open(url) as buf:
        text = buf.save(b"hello world", subject="a.b", headers={"K": "v"})
        binary = buf.save(bytes(range(200)), subject="c.d")
        buf.mark_dead(binary.id, "too strange", attempts=2)
    code, out = invoke("inspect", "--url", url, "--json", "--peek", "5")
    assert code == 0
    data = json.loads(out)
    assert (data["pending"], data["dead"], data["bytes"], data["subjects"]) == (1, 1, 11, {"a.b": 1})
    assert data["messages"][0]["payload"] == "hello world" and data["messages"][0]["id"] == text.id
    assert data["dead_letters"][0]["payload"].startswith("0x000102")
    assert data["dead_letters"][0]["reason"] == "too strange"
    code, out = invoke("inspect", "--url", url, "--list")
    assert code == 0 and "1 pending" in out and "hello world" in out


def test_mistakes_are_one_line_without_traceback(tmp_path: Path) -> None:
    for args, expected in (
        (["inspect", "--url", f"sqlite:///{tmp_path}/missing.db"], "no buffer at"),
        (["inspect", "--url", "redis://localhost"], "unknown buffer URL scheme"),
        (["send", "a b", "x", "--url", f"sqlite:///{tmp_path}/b.db", "-s", "nats://127.0.0.1:1"], "subject"),
        (["drain", "--url", f"sqlite:///{tmp_path}/b.db", "-s", "nats://127.0.0.1:1"], "cannot connect"),
    ):
        run = subprocess.run([*PBUFFER, *args], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode != 0, args
        assert expected in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stderr, run.stderr
    debug = subprocess.run([*PBUFFER, "--debug", "inspect", "--url", "redis://x"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert "Traceback" in debug.stderr


def test_schema_too_new_is_a_clear_line(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "b.db"
    pbuffer.open(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE pbuffer_alembic_version SET version_num = '9999'")
    run = subprocess.run([*PBUFFER, "inspect", "--url", f"sqlite:///{path}"], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 1 and "newer pbuffer" in run.stderr and "Traceback" not in run.stderr


def test_db_commands(url: str) -> None:
    assert invoke("db", "upgrade", "--url", url)[1].strip() == "at revision 0002"
    assert invoke("db", "current", "--url", url)[1].strip() == "0002"
    assert "(head) (current)" in invoke("db", "history", "--url", url)[1]
    assert invoke("db", "check", "--url", url) == (0, "the schema matches this pbuffer\n")
    code, _ = invoke("db", "downgrade", "--url", url, "--revision", "base", input="n\n")
    assert code == 1 and pbuffer.current(url) == "0002"  # declined
    assert invoke("db", "downgrade", "--url", url, "--revision", "base", "--yes")[0] == 0
    assert invoke("db", "current", "--url", url)[1].strip() == "base (empty)"


def test_requeue_and_purge(url: str) -> None:
    with pbuffer.open(url) as buf:
        a, b, c = buf.save_many([b"a", b"b", b"c"], subject="s")
        buf.mark_dead(a.id, "x")
        buf.mark_dead(b.id, "y")
    assert invoke("requeue", "--url", url, a.id)[1].strip() == "requeued 1 of 1"
    assert invoke("requeue", "--url", url, "--all")[1].strip() == "requeued 1 of 1"
    with pbuffer.open(url) as buf:
        assert [m.id for m in buf.get_all()] == [c.id, a.id, b.id]
        buf.mark_dead(c.id, "z")
    code, _ = invoke("purge", "--url", url, "--dead", input="n\n")
    assert code == 1
    assert invoke("purge", "--url", url, "--dead", "--yes")[1].strip() == "deleted 1 message(s)"
    assert invoke("purge", "--url", url, "--yes")[1].strip() == "deleted 2 message(s)"
    with pbuffer.open(url) as buf:
        assert len(buf) == 0 and buf.dead_letters() == []


def test_send_and_drain_against_a_server(url: str, server: NatsServer) -> None:
    run = subprocess.run([*PBUFFER, "send", "nobody.listens", "x", "--url", url, "-s", server.url],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 1 and "no JetStream stream covers subject 'nobody.listens'" in run.stderr
    assert "Traceback" not in run.stderr
    add_stream(server, "ORDERS", ["orders.>"])
    code, out = invoke("send", "orders.created", "hello", "--url", url, "-s", server.url, "-H", "K=v")
    assert code == 0 and out.startswith("sent ")
    with pbuffer.open(url) as buf:
        buf.save_many([b"1", b"2", b"3"], subject="orders.created")
    run = subprocess.run([*PBUFFER, "drain", "--url", url, "-s", server.url], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "published 3" in run.stdout
    with pbuffer.open(url) as buf:
        assert len(buf) == 0


def test_drain_follow_stops_cleanly_on_sigterm(url: str, server: NatsServer) -> None:
    add_stream(server, "ORDERS", ["orders.>"])
    env = {**os.environ, "PBUFFER_URL": url, "NATS_URL": server.url}
    process = subprocess.Popen([*PBUFFER, "drain", "--follow"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        with pbuffer.open(url) as buf:
            buf.save_many([b"late"] * 10, subject="orders.created")  # another process: found by polling
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with pbuffer.open(url) as buf:
                if len(buf) == 0:
                    break
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, err
    assert "published 10" in out


def test_demo_end_to_end() -> None:
    started = time.monotonic()
    run = subprocess.run([*PBUFFER, "demo", "--messages", "1000"], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nothing lost, nothing duplicated" in run.stdout
    assert "lost (saved ids missing" in run.stdout
    assert time.monotonic() - started < 60
