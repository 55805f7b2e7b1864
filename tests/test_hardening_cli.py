"""The pbuffer command: looking at a path never creates, initialises or upgrades a buffer there; schema moves say
what the database is at; prompts without a terminal and interrupted drains end clearly."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from nats_support import add_stream
from pbuffer.backends import versioning

import pbuffer
from pbuffer.cli import main
from pbuffer.examples.natsserver import NatsServer

HEAD = versioning.head_revision()
FIRST = versioning.known_revisions()[0]
PBUFFER = [sys.executable, "-m", "pbuffer.cli"]
# Every command that only looks, and drain (which must not create a buffer either). NATS is unreachable on port 1:
# drain reports that first, so it is given a server that answers in the test that needs one.
LOOKING = (["inspect"], ["inspect", "--json"], ["db", "verify"], ["db", "check"], ["db", "current"])


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def files_in(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


# --------------------------------------------------------------------------------------- schema moves, CLI

def test_db_upgrade_to_an_older_revision_is_an_error_and_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save(b"kept", subject="a")
    before = (tmp_path / "b.db").read_bytes()
    for revision in (FIRST, "base"):
        run = subprocess.run([*PBUFFER, "db", "upgrade", "--url", url, "--revision", revision], capture_output=True,
                             text=True, timeout=120, check=False)
        assert run.returncode == 1, run.stdout
        assert "at revision" not in run.stdout and "Traceback" not in run.stderr
        assert f"cannot upgrade to revision {revision}" in run.stderr
        assert "migrating" not in run.stderr, "no migration may be logged"
    assert (tmp_path / "b.db").read_bytes() == before
    assert not list(tmp_path.glob("b.db.backup-*"))
    assert invoke("db", "current", "--url", url)[1].strip() == HEAD
    assert invoke("db", "downgrade", "--url", url, "--revision", FIRST, "--yes")[1].strip() == f"at revision {FIRST}"
    run = subprocess.run([*PBUFFER, "db", "downgrade", "--url", url, "--revision", "head", "--yes"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1 and f"cannot downgrade to revision {HEAD}" in run.stderr
    assert "Traceback" not in run.stderr
    assert invoke("db", "upgrade", "--url", url)[1].strip() == f"at revision {HEAD}"


# ---------------------------------------------------------------------------- looking never changes anything

@pytest.mark.parametrize("command", LOOKING, ids=" ".join)
def test_looking_at_a_missing_path_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "nothing" / "here.db"
    result = CliRunner().invoke(main, [*command, "--url", f"sqlite:///{path}"])
    assert result.exit_code == 1
    assert "no buffer at" in result.output
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("command", LOOKING, ids=" ".join)
def test_looking_at_a_zero_byte_file_leaves_it_zero_bytes(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    result = CliRunner().invoke(main, [*command, "--url", f"sqlite:///{path}"])
    if command == ["db", "current"]:
        assert result.exit_code == 0 and result.output.strip() == "base (empty)"
    else:
        assert result.exit_code == 1, result.output
        assert "no buffer at" in result.output
    with pytest.raises(pbuffer.ConfigurationError, match="no buffer at"):
        pbuffer.schema.recovery.verify(f"sqlite:///{path}")  # the library function, not only the command
    assert files_in(tmp_path) == {"empty.db": b""}


@pytest.mark.parametrize("command", LOOKING, ids=" ".join)
def test_looking_at_a_downgraded_file_never_upgrades_it(tmp_path: Path, command: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    with pbuffer.open(url) as buf:
        buf.save(b"kept", subject="a")
    pbuffer.downgrade(url, FIRST)
    before = (tmp_path / "old.db").read_bytes()
    result = CliRunner().invoke(main, [*command, "--url", url])
    if command == ["db", "current"]:
        assert result.exit_code == 0 and result.output.strip() == FIRST
    else:
        assert result.exit_code == 1, result.output
        assert f"revision {FIRST}" in result.output and "pbuffer db upgrade --url" in result.output
    assert (tmp_path / "old.db").read_bytes() == before
    assert not list(tmp_path.glob("old.db.backup-*"))
    assert pbuffer.current(url) == FIRST


def test_drain_of_a_missing_or_empty_buffer_creates_nothing(tmp_path: Path, server: NatsServer) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for path, follow in itertools.product((tmp_path / "missing.db", empty), ([], ["--follow"])):
        run = subprocess.run([*PBUFFER, "drain", *follow, "--url", f"sqlite:///{path}", "-s", server.url],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 1 and "no buffer at" in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert files_in(tmp_path) == {"empty.db": b""}


def test_writers_on_a_missing_or_empty_buffer_create_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    for path in (tmp_path / "missing.db", empty):
        for command in (["requeue", "--all"], ["purge", "--yes"]):
            result = CliRunner().invoke(main, [*command, "--url", f"sqlite:///{path}"])
            assert result.exit_code == 1 and "no buffer at" in result.output, (command, result.output)
    assert files_in(tmp_path) == {"empty.db": b""}


def test_inspect_of_a_buffer_at_head_still_works_and_writes_nothing_to_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save(b"hello", subject="a.b")
    before = (tmp_path / "b.db").read_bytes()
    code, out = invoke("inspect", "--url", url)
    assert code == 0 and "1 pending" in out
    assert (tmp_path / "b.db").read_bytes() == before


# --------------------------------------------------------------------------------- prompts without a terminal

@pytest.mark.parametrize("stdin", ["devnull", "closed"])
@pytest.mark.parametrize("command", [["purge"], ["db", "downgrade", "--revision", "base"]], ids=" ".join)
def test_a_prompt_without_an_answer_is_one_line_and_changes_nothing(tmp_path: Path, stdin: str,
                                                                     command: list[str]) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        saved = buf.save(b"kept", subject="a")
    args = [*PBUFFER, *command, "--url", url]
    if stdin == "devnull":
        run = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                             check=False)
    else:  # fd 0 closed altogether: Python starts with sys.stdin = None
        run = subprocess.run(["/bin/sh", "-c", 'exec "$@" <&-', "sh", *args], capture_output=True, text=True,
                             timeout=120, check=False)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass --yes" in lines[0], run.stderr
    assert pbuffer.current(url) == HEAD
    with pbuffer.open(url) as buf:
        assert [m.id for m in buf.get_all()] == [saved.id]


def test_a_prompt_answered_no_changes_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save(b"kept", subject="a")
    code, out = invoke("purge", "--url", url, input="n\n")
    assert code == 1 and "nothing was deleted" in out
    assert invoke("purge", "--url", url, input="y\n") == (0, "Delete 1 message(s) from "
                                                              f"{url} for good? [y/N]: y\ndeleted 1 message(s)\n")


# -------------------------------------------------------------------------------- drain stopped half-way

def test_drain_stopped_by_ctrl_c_with_messages_left_exits_130(tmp_path: Path, server: NatsServer) -> None:
    add_stream(server, "ORDERS", ["orders.>"])
    url = f"sqlite:///{tmp_path}/b.db"
    total = 20_000
    with pbuffer.open(url) as buf:
        for _ in range(0, total, 1000):
            buf.save_many([b"x"] * 1000, subject="orders.created")
    # One message per window: slow enough that the signal lands long before the buffer is empty.
    process = subprocess.Popen([*PBUFFER, "drain", "--url", url, "-s", server.url, "--batch-size", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # wait until it is publishing (so its signal handlers are in place)
            with pbuffer.open(url) as buf:
                if len(buf) < total:
                    break
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "drain never started publishing"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    with pbuffer.open(url) as buf:
        left = len(buf)
    assert left > 0, "the test needs the drain stopped before the end"
    assert process.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert f"{left:,} message(s) left" in err
    assert "published" in out


def test_drain_that_empties_the_buffer_exits_0(tmp_path: Path, server: NatsServer) -> None:
    add_stream(server, "ORDERS", ["orders.>"])
    url = f"sqlite:///{tmp_path}/b.db"
    with pbuffer.open(url) as buf:
        buf.save_many([b"1", b"2"], subject="orders.created")
    run = subprocess.run([*PBUFFER, "drain", "--url", url, "-s", server.url], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ})
    assert run.returncode == 0, run.stderr
    assert "published 2" in run.stdout
