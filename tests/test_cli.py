"""The pbuffer command, driven as a user would: click's runner in-process, and subprocesses for the real thing."""

from __future__ import annotations

import json
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
PBUFFER = [sys.executable, "-m", "pbuffer.cli"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'buf.db'}"


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    return result.exit_code, result.output


def test_every_command_has_help_with_an_example() -> None:
    for command in (["demo"], ["inspect"], ["watch"], ["drain"], ["send"], ["requeue"], ["purge"], ["db", "upgrade"],
                    ["db", "downgrade"], ["db", "current"], ["db", "history"], ["db", "check"], ["db", "verify"],
                    ["db", "quarantine"]):
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
    assert data["by_subject"] == {  # from the counters: the dead letter's subject too
        "a.b": {"pending": 1, "bytes": 11, "dead": 0, "dead_bytes": 0, "dropped": 0, "expired": 0},
        "c.d": {"pending": 0, "bytes": 0, "dead": 1, "dead_bytes": 200, "dropped": 0, "expired": 0}}
    assert data["messages"][0]["payload"] == "hello world" and data["messages"][0]["id"] == text.id
    assert data["dead_letters"][0]["payload"].startswith("0x000102")
    assert data["dead_letters"][0]["reason"] == "too strange"
    code, out = invoke("inspect", "--url", url, "--list")
    assert code == 0 and "1 pending" in out and "hello world" in out


def test_inspect_shows_what_the_limits_removed(url: str) -> None:
    with pbuffer.open(url, max_messages=2, overflow="drop_oldest") as buf:
        with pytest.raises(pbuffer.BufferFullError):
            buf.save_many([b"1", b"2", b"3"], subject="a.b")  # three can never fit in two places
        for payload in (b"4", b"5", b"6"):
            buf.save(payload, subject="a.b")
    code, out = invoke("inspect", "--url", url, "--json")
    data = json.loads(out)
    assert code == 0 and (data["pending"], data["dropped"], data["expired"], data["bytes"]) == (2, 1, 0, 2)
    code, out = invoke("inspect", "--url", url)
    assert code == 0 and "1 dropped" in out


def test_mistakes_are_one_line_without_traceback(tmp_path: Path) -> None:
    for args, expected in (
        (["inspect", "--url", f"sqlite:///{tmp_path}/missing.db"], "no buffer at"),
        (["inspect", "--url", "redis://localhost"], "unknown buffer URL scheme"),
        (["send", "a b", "x", "--url", f"sqlite:///{tmp_path}/b.db", "-s", "nats://127.0.0.1:1"], "subject"),
        (["drain", "--url", f"sqlite:///{tmp_path}/b.db", "-s", "nats://127.0.0.1:1"], "cannot connect"),
        (["drain", "--window-bytes", "0", "--url", f"sqlite:///{tmp_path}/b.db"], "--window-bytes"),
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
    assert invoke("db", "upgrade", "--url", url)[1].strip() == f"at revision {HEAD}"
    assert invoke("db", "current", "--url", url)[1].strip() == HEAD
    assert "(head) (current)" in invoke("db", "history", "--url", url)[1]
    assert invoke("db", "check", "--url", url) == (0, "the schema matches this pbuffer\n")
    code, _ = invoke("db", "downgrade", "--url", url, "--revision", "base", input="n\n")
    assert code == 1 and pbuffer.current(url) == HEAD  # declined
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
    # A window of 2 messages, then windows of 1 byte's worth (one message each): every message still goes.
    run = subprocess.run([*PBUFFER, "drain", "--url", url, "-s", server.url, "--batch-size", "2", "--window-bytes",
                          "1"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    assert "published 3" in run.stdout
    with pbuffer.open(url) as buf:
        assert len(buf) == 0


def test_drain_follow_stops_cleanly_on_sigterm(url: str, server: NatsServer) -> None:
    add_stream(server, "ORDERS", ["orders.>"])
    pbuffer.open(url).close()  # drain creates no buffer, --follow included
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
    run = subprocess.run([*PBUFFER, "demo", "--messages", "1000"], capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nothing lost, nothing duplicated" in run.stdout
    assert "lost (saved ids missing" in run.stdout
    assert "fast-ingest" not in run.stdout


def test_demo_with_fast_ingest_batches() -> None:
    run = subprocess.run([*PBUFFER, "demo", "--messages", "1500", "--fast-ingest"], capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "nothing lost, nothing duplicated" in run.stdout
    rows = dict(line.split("\t", 1) for line in run.stdout.splitlines() if "\t" in line)
    # The relay's windows of 500 went as batches: every message but a straggler window's was confirmed by one.
    assert 1000 <= int(rows["confirmed by fast-ingest batches"].replace(",", "")) <= 1500


# ------------------------------------------------------------------------------------- recovery: verify, quarantine

def damage(path: Path, marker: bytes) -> None:
    """Flip one byte of a payload in a closed sqlite file (everything checkpointed into it)."""
    data = bytearray(path.read_bytes())
    data[data.index(marker) + 3] ^= 0x01
    path.write_bytes(bytes(data))


def test_db_verify_names_every_damaged_message(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    with pbuffer.open(url) as buf:
        saved = buf.save_many([f"PAYLOAD-{i:05d}-".encode() * 5 for i in range(2500)], subject="v")
        buf.mark_dead(saved[7].id, "x")
    code, out = invoke("db", "verify", "--url", url)
    assert code == 0 and "checked 2,499 pending message(s) and 1 dead letter(s)" in out and out.endswith("ok\n")
    for i in (3, 1500, 2499, 7):  # three pending messages, at the start, the middle and the end; a dead letter
        damage(path, f"PAYLOAD-{i:05d}-".encode())
    code, out = invoke("db", "verify", "--url", url, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["integrity_check"] == ["ok"]
    assert report["damaged"] == [saved[3].id, saved[1500].id, saved[2499].id, saved[7].id]
    assert (report["pending"], report["dead"]) == (2496, 0)
    run = subprocess.run([*PBUFFER, "db", "verify", "--url", url], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 1 and "NOT OK" in run.stdout and "Traceback" not in run.stderr
    assert all(f"damaged: {saved[i].id}" in run.stdout for i in (3, 1500, 2499, 7))
    # The procedure for damaged messages: move them aside (or delete them); the rest is sound.
    with pbuffer.open(url) as buf:
        for i in (3, 1500, 2499):
            assert buf.mark_dead(saved[i].id, "damaged on disk")
        assert len(buf.get_all()) == 2496
        assert buf.delete_many([saved[i].id for i in (3, 1500, 2499, 7)]) == 4
    assert invoke("db", "verify", "--url", url)[0] == 0


def test_db_verify_reports_a_damaged_or_foreign_file(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    with pbuffer.open(url) as buf:
        buf.save_many([os.urandom(200) for _ in range(2000)], subject="a")
    data = bytearray(path.read_bytes())
    data[4096 * 3: 4096 * 3 + 64] = b"\xa5" * 64  # an interior page: structure, not just a payload
    path.write_bytes(bytes(data))
    code, out = invoke("db", "verify", "--url", url, "--json")
    report = json.loads(out)
    assert code == 1 and report["integrity_check"] != ["ok"] and report["integrity_check"]
    text = tmp_path / "notes.db"
    text.write_bytes(b"not a database\n" * 100)
    code, out = invoke("db", "verify", "--url", f"sqlite:///{text}")
    assert code == 1 and "not a database" in out and "NOT OK" in out
    assert text.read_bytes() == b"not a database\n" * 100
    code, out = invoke("db", "verify", "--url", f"sqlite:///{tmp_path}/missing.db")
    assert code == 1 and "no buffer at" in out and not (tmp_path / "missing.db").exists()


WRITER = """
import sys
import pbuffer

buf = pbuffer.open(sys.argv[1])
ids = [m.id for m in buf.save_many([b"m%d" % i for i in range(int(sys.argv[2]))], subject="q")]
print(" ".join(ids), flush=True)
sys.stdin.readline()  # killed here, or told to go on holding the buffer open
"""


def test_db_quarantine_moves_the_files_aside_and_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, url, "300"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    ids = writer.stdout.readline().split()
    writer.kill()  # its commits stay in the -wal, as after a crash
    writer.wait()
    names = ("b.db", "b.db-wal", "b.db-shm")
    before = {name: (tmp_path / name).read_bytes() for name in names}
    run = subprocess.run([*PBUFFER, "db", "quarantine", "--url", url], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("moved ") for line in lines)
    moved = {Path(old).name: Path(new) for old, new in (line.removeprefix("moved ").split(" -> ") for line in lines)}
    assert set(moved) == set(names)
    stamp = moved["b.db"].name.removeprefix("b.db.quarantined-")
    assert len(stamp) == 16 and stamp.endswith("Z") and stamp[8] == "T"
    for name in names:
        new = moved[name]
        assert new.parent == tmp_path and new.name == f"b.db.quarantined-{stamp}{name.removeprefix('b.db')}"
        assert not (tmp_path / name).exists()
        assert new.read_bytes() == before[name]  # moved, not rewritten, nothing deleted
        assert new.stat().st_mode & 0o777 == 0o600
    with pbuffer.open(url) as fresh:  # a new buffer at the old path
        assert len(fresh) == 0
    with pbuffer.open(f"sqlite:///{moved['b.db']}") as old:  # the quarantined file still has every commit
        assert [m.id for m in old.get_all()] == ids
    # Quarantined again within the same second: a new name, nothing overwritten.
    code, out = invoke("db", "quarantine", "--url", url)
    assert code == 0 and "b.db.quarantined-" in out and moved["b.db"].exists()


def test_db_quarantine_refuses_a_buffer_in_use(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    url = f"sqlite:///{path}"
    holder = subprocess.Popen([sys.executable, "-c", WRITER, url, "5"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdin is not None and holder.stdout is not None
    try:
        holder.stdout.readline()
        run = subprocess.run([*PBUFFER, "db", "quarantine", "--url", url], capture_output=True, text=True,
                             timeout=60, check=False)
        assert run.returncode == 1 and "open in another process" in run.stderr and "Traceback" not in run.stderr
        assert path.exists() and not list(tmp_path.glob("*quarantined*"))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    run = subprocess.run([*PBUFFER, "db", "quarantine", "--url", url], capture_output=True, text=True, timeout=60,
                         check=False)
    assert run.returncode == 0 and not path.exists()
    for mistake, expected in ((f"sqlite:///{tmp_path}/missing.db", "no buffer at"),
                              ("memory://", "sqlite files only")):
        code, out = invoke("db", "quarantine", "--url", mistake)
        assert code == 1 and expected in out


# ------------------------------------------------------------------------- output that survives a pipe and hostile text

LONG = "a-directory-name-that-is-deliberately-rather-long-to-shift-every-path"


def run_pbuffer(*args: str, columns: int = 40) -> subprocess.CompletedProcess[str]:
    """The real command with stdout and stderr piped, as under `| grep`, on a narrow 'terminal'."""
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "10"}
    return subprocess.run([*PBUFFER, *args], capture_output=True, text=True, timeout=60, check=False, env=env)


def test_piped_output_keeps_every_logical_line_whole(tmp_path: Path) -> None:
    deep = tmp_path / LONG / LONG
    deep.mkdir(parents=True)
    url = f"sqlite:///{deep / 'buf.db'}"
    with pbuffer.open(url) as buf:
        kept = buf.save(b"hello world, a payload wrapped at forty columns", subject="orders.created")
        dead = buf.save(b"x", subject="orders.failed")
        buf.mark_dead(dead.id, "a reason that is rather long and would certainly be wrapped", attempts=3)
    for columns in (40, 80, 300):
        run = run_pbuffer("inspect", "--url", url, "--list", columns=columns)
        assert run.returncode == 0, run.stderr
        summary = [line for line in run.stdout.splitlines() if "pending (" in line]
        assert summary == [f"{url}: 1 pending (47 bytes), 1 dead; oldest {summary[0].split('oldest ')[1]}"]
        # Tables become one tab-separated line per row.
        assert "orders.created\t1" in run.stdout.splitlines()
        assert (f"{kept.id}\torders.created\t47\thello world, a payload wrapped at forty columns"
                in run.stdout.splitlines())
        assert (f"{dead.id}\torders.failed\t1\tx\ta reason that is rather long and would certainly be wrapped\t3"
                in run.stdout.splitlines())
    run = run_pbuffer("db", "verify", "--url", url)
    assert run.returncode == 0 and "checked 1 pending message(s) and 1 dead letter(s)" in run.stdout.splitlines()
    assert run_pbuffer("db", "current", "--url", url).stdout == f"{HEAD}\n"
    missing = f"sqlite:///{deep / 'missing.db'}"
    run = run_pbuffer("inspect", "--url", missing)
    assert run.returncode == 1 and run.stderr == f"error: no buffer at {deep / 'missing.db'}\n"
    run = run_pbuffer("send", "a b", "x", "--url", url, "-s", "nats://127.0.0.1:1")
    assert run.returncode == 1 and len(run.stderr.splitlines()) == 1 and "subject" in run.stderr


def test_text_from_a_buffer_or_a_user_is_never_markup(tmp_path: Path) -> None:
    directory = tmp_path / "odd[/]dir [bold]x"
    directory.mkdir(parents=True)  # "odd[" / "]dir [bold]x": the path holds "[/]"
    url = f"sqlite:///{directory / 'buf.db'}"
    with pbuffer.open(url) as buf:
        buf.save(b"[red]secret[/red]", subject="orders.[/]")
    run = run_pbuffer("inspect", "--url", url, "--list")
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"{url}: 1 pending" in run.stdout
    assert "orders.[/]\t1" in run.stdout and "[red]secret[/red]" in run.stdout
    run = run_pbuffer("send", "a [/]", "x", "--url", url, "-s", "nats://127.0.0.1:1")
    assert run.returncode == 1 and "Traceback" not in run.stderr and "'a [/]'" in run.stderr
    assert len(run.stderr.splitlines()) == 1


def test_passwords_in_urls_are_never_printed(tmp_path: Path) -> None:
    for url in ("postgresql+psycopg://postgres:S3CRETPW@127.0.0.1:1/test", "mysql+pymysql://root:S3CRETPW@127.0.0.1:1/t",
                "postgresql+psycopg://postgres:S3CR/ET@PW@127.0.0.1:1/test",
                "postgresql+psycopg://postgres:S3CRETPW@127.0.0.1:notaport/test"):  # "not a database URL"
        for args in (["inspect", "--url", url], ["db", "current", "--url", url], ["db", "verify", "--url", url],
                     ["purge", "--url", url, "--yes"], ["db", "downgrade", "--url", url, "--revision", "base"]):
            run = run_pbuffer(*args)
            assert run.returncode != 0, args
            assert "S3CR" not in run.stdout + run.stderr, (args, run.stdout + run.stderr)
            assert "Traceback" not in run.stderr, run.stderr


def test_display_url_masks_only_the_password() -> None:
    from pbuffer.registry import display_url

    assert display_url("postgresql://u:pw@h:5432/db?sslmode=require") == "postgresql://u:***@h:5432/db?sslmode=require"
    assert display_url("postgresql://u:p/w@d@h/db") == "postgresql://u:***@h/db"
    assert display_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert display_url("sqlite:////tmp/a:b@c.db") == "sqlite:////tmp/a:b@c.db"
    assert display_url("memory://") == "memory://"


def test_percent_encoded_paths_mean_what_they_mean_in_the_library(tmp_path: Path) -> None:
    directory = tmp_path / "with space"
    directory.mkdir()
    url = f"sqlite:///{tmp_path}/with%20space/b.db"
    with pbuffer.open(url) as buf:  # the library decodes %20
        buf.save(b"x", subject="a.b")
    assert sorted(p.name for p in directory.iterdir() if p.suffix == ".db") == ["b.db"]
    for args in (["inspect", "--url", url], ["db", "verify", "--url", url], ["db", "current", "--url", url]):
        code, out = invoke(*args)
        assert code == 0, (args, out)
    assert "1 pending" in invoke("inspect", "--url", url)[1]
