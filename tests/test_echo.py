"""The stream-echo example: its generated protobuf module, stream naming, and the exchange end to end against a
real nats-server, including requests saved while NATS (or the echo server) was down."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

import pbuffer
from pbuffer.examples.echo import (
    REQUEST_ID_HEADER,
    current_user_stream,
    ensure_stream,
    main,
    reply_subject,
    request,
    serve,
    stream_name_for_user,
)
from pbuffer.examples.echo_pb2 import EchoRequest, EchoResponse
from pbuffer.examples.natsserver import NatsServer, free_port

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- generated module


def test_generated_module_matches_a_fresh_generation(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True,
                   capture_output=True)
    for name in ("echo_pb2.py", "echo_pb2.pyi"):
        fresh = (tmp_path / name).read_bytes()
        assert (ROOT / "pbuffer" / "examples" / name).read_bytes() == fresh, \
            f"pbuffer/examples/{name} is stale: python protos/generate.py"


def test_generator_pin_matches_the_dev_extra() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    pinned = re.search(r'"grpcio-tools==([^"]+)"', pyproject)
    assert pinned is not None, "the dev extra must pin grpcio-tools"
    script = (ROOT / "protos" / "generate.py").read_text()
    assert f'GRPCIO_TOOLS_VERSION = "{pinned.group(1)}"' in script


def test_generated_module_loads_on_the_installed_runtime_without_warnings() -> None:
    program = ("from pbuffer.echo_pb2 import EchoRequest, EchoResponse\n"  # the documented path
               "assert EchoRequest.__module__ == 'pbuffer.echo_pb2'\n"
               "assert EchoRequest.DESCRIPTOR.full_name == 'pbuffer.echo.EchoRequest'\n"
               "data = EchoRequest(message='hi').SerializeToString()\n"
               "assert EchoResponse.FromString(data).message == 'hi'\n")
    run = subprocess.run([sys.executable, "-W", "error", "-c", program], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr


def test_generated_files_say_they_are_generated_and_how_to_regenerate() -> None:
    for name in ("echo_pb2.py", "echo_pb2.pyi"):
        head = (ROOT / "pbuffer" / "examples" / name).read_text().splitlines()[:8]
        assert any("DO NOT EDIT" in line for line in head), name
        assert any("python protos/generate.py" in line for line in head), name


# ------------------------------------------------------------------------------------------------ stream names


@pytest.mark.parametrize(("user", "stream"), [
    ("john.doe", "john_doe"),
    ("a b", "a_b"),
    ("x*>", "x__"),
    ("dom\\user/x", "dom_user_x"),
    ("tab\there", "tab_here"),
    ("alice", "alice"),
    ("Bob_9-x", "Bob_9-x"),
    ("", "pbuffer-echo"),
    (None, "pbuffer-echo"),
])
def test_stream_name_for_user(user: str | None, stream: str) -> None:
    assert stream_name_for_user(user) == stream


def test_stream_name_for_user_is_bounded() -> None:
    assert len(stream_name_for_user("u" * 500)) <= 64


# ------------------------------------------------------------------------------------------------- end to end


async def _stored(url: str, subject: str) -> list[Msg]:
    """Every message the stream holds on ``subject``, oldest first."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(subject, stream=await js.find_stream_name_by_subject(subject))
        found: list[Msg] = []
        while True:
            try:
                found += await sub.fetch(100, timeout=0.5)
            except asyncio.TimeoutError:
                return found
    finally:
        await nc.close()


async def _until(check: Callable[[], object], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_client_request_is_answered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'buffer.db'}"
    with NatsServer() as server:
        stop = asyncio.Event()
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(server.url, "hello", stop_event=stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        result = await request(server.url, "hello", "hi there", url=url, timeout=10)
        stop.set()
        assert await asyncio.wait_for(serving, 10) == 1
        assert result.exit_code == 0
        assert result.responses == {result.request_id: "hi there"}
        assert "Got response: 'hi there'" in capsys.readouterr().out
        with pbuffer.open(url) as buf:
            assert len(buf) == 0  # relayed, acknowledged, deleted
        (reply,) = await _stored(server.url, "hello.reply")
        assert (reply.headers or {})[REQUEST_ID_HEADER] == result.request_id
        # Named after the user, sanitized.
        nc = await nats.connect(server.url)
        try:
            assert await nc.jetstream().find_stream_name_by_subject("hello") == current_user_stream()
        finally:
            await nc.close()


async def test_requests_saved_while_nats_is_down_are_answered_once_after_it_comes_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'buffer.db'}"
    subject = "echo.outage"
    texts = ["one", "two", "three"]
    with NatsServer() as server:
        nc = await nats.connect(server.url)
        assert await ensure_stream(nc.jetstream(), subject, "john_doe") == "john_doe"
        await nc.close()
        # The echo server runs throughout: it rides out the outage and picks up where its durable consumer was.
        stop = asyncio.Event()
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(server.url, subject, stop_event=stop, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)

        server.kill()
        for count, text in enumerate(texts, 1):
            result = await request(server.url, subject, text, url=url, timeout=2)
            assert result.exit_code == 3, "NATS is down: the request must stay in the buffer"
            assert result.buffered == count
        assert "Got response" not in capsys.readouterr().out
        with pbuffer.open(url) as buf:
            assert [EchoRequest.FromString(m.payload).message for m in buf.get_all()] == texts

        server.start()  # same port, same store
        result = await request(server.url, subject, "four", url=url, timeout=20)
        assert result.exit_code == 0, result
        assert sorted(result.responses.values()) == sorted([*texts, "four"])
        out = capsys.readouterr().out
        for text in [*texts, "four"]:
            assert out.count(f"Got response: '{text}'") == 1

        stop.set()
        assert await asyncio.wait_for(serving, 10) == 4
        with pbuffer.open(url) as buf:
            assert len(buf) == 0
        stored_requests = [EchoRequest.FromString(m.data).message for m in await _stored(server.url, subject)]
        assert stored_requests == [*texts, "four"]  # each once, in the order saved
        replies = await _stored(server.url, reply_subject(subject))
        assert Counter(EchoResponse.FromString(m.data).message for m in replies) == Counter([*texts, "four"])


async def test_requests_wait_in_the_stream_for_an_echo_server(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'buffer.db'}"
    with NatsServer() as server:
        result = await request(server.url, "late", "anyone?", url=url, timeout=1.5)
        assert result.exit_code == 4  # delivered to JetStream, not answered: no echo server yet
        assert result.buffered == 0
        assert result.unanswered == [result.request_id]

        stop = asyncio.Event()
        serving = asyncio.create_task(serve(server.url, "late", stop_event=stop))
        replies: list[Msg] = []

        async def poll() -> None:
            while not replies:
                replies.extend(await _stored(server.url, "late.reply"))

        await asyncio.wait_for(poll(), 15)
        stop.set()
        assert await asyncio.wait_for(serving, 10) == 1
        (reply,) = replies
        assert EchoResponse.FromString(reply.data).message == "anyone?"
        assert (reply.headers or {})[REQUEST_ID_HEADER] == result.request_id


def test_cli_client_without_nats_keeps_the_request_and_exits_nonzero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'buffer.db'}"
    status = main(["client", "hello", "-d", "kept", "-s", f"nats://127.0.0.1:{free_port()}", "--url", url,
                   "--timeout", "2"])
    assert status == 3
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    with pbuffer.open(url) as buf:
        (saved,) = buf.get_all()
        assert saved.subject == "hello"
        assert EchoRequest.FromString(saved.payload).message == "kept"


def test_module_runs_as_a_script() -> None:
    run = subprocess.run([sys.executable, "-m", "pbuffer.echo", "client", "--help"], capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    for option in ("--data", "--servers", "--creds", "--url", "--timeout"):
        assert option in run.stdout
