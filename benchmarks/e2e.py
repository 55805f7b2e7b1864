"""End to end through a local nats-server: pbuffer's relay (sqlite buffer -> relay -> nats-server -> PubAck ->
delete), the seed's publish loop, and nats-py's bare ``publish_async`` (the ceiling); and the memory a relay
needs to drain a big backlog, measured in a fresh child process (``python -m <this module>``).

One nats-server per case (:meth:`.harness.Context.resource`, started untimed), file storage (the default), and a
fresh stream per repetition: deleted and re-created before the timed section, deleted again after it. nats-py and
the server binary are needed only when these workloads run; a missing binary skips the cases (:func:`nats_missing`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pbuffer

from .harness import Context, timed_async
from .payload import current
from .workloads import SUBJECT, copy_backlog, fill, open_buffer, scraped_metrics

__all__ = [
    "BATCH_SIZE",
    "ceiling_publish_async",
    "nats_missing",
    "nats_server_version",
    "relay_drain",
    "relay_drain_behind_a_stuck_subject",
    "relay_drain_memory",
    "relay_stages",
    "seed_publish_loop",
]

STREAM = "BENCH"
#: The relay's window; 500 (also the Relay default) measured at least as fast as 1,000 here (see cases.py).
BATCH_SIZE = 500
#: What the ceiling's JetStreamContext allows in flight: far above any count here, so publish_async never stalls
#: (nats-py's default, 4,000, would make it wait for acks part way).
CEILING_MAX_PENDING = 1_000_000
#: Memory is reported in MB of 10**6 bytes (the larger figure than MiB, so the stricter for a "< 100 MB" bound).
MB = 1_000_000
#: How often the child's sampler thread reads VmRSS during the drain.
SAMPLE_INTERVAL = 0.05
#: A drain of a million messages takes a minute or two here; a child still running after this has hung.
CHILD_TIMEOUT = 1_800.0


def nats_missing() -> str | None:
    """Why the nats cases cannot run here (``None`` if they can)."""
    try:
        import pbuffer.relay.jetstream  # needs nats-py
        from pbuffer.examples.natsserver import find_binary

        find_binary()
    except (ImportError, pbuffer.ConfigurationError):
        return "skipped: nats-server not installed"
    return None


def nats_server_version() -> str | None:
    """``nats-server --version`` of the binary these cases would start, e.g. ``v2.15.1``."""
    try:
        from pbuffer.examples.natsserver import find_binary

        result = subprocess.run([find_binary(), "--version"], capture_output=True, text=True, timeout=10,
                                check=False)
    except (ImportError, pbuffer.ConfigurationError, OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    # "nats-server: v2.15.1"
    return (result.stdout or result.stderr).strip().rpartition(" ")[2] or None


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"benchmark sanity check failed: {what}")


def _server_url(context: Context) -> str:
    from pbuffer.examples.natsserver import NatsServer

    server: NatsServer = context.resource("nats-server", NatsServer)
    return server.url


async def _fresh_stream(js: Any) -> None:
    import nats.js.errors

    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(STREAM)
    await js.add_stream(name=STREAM, subjects=[SUBJECT])


async def _stored(js: Any) -> int:
    info = await js.stream_info(STREAM)
    return int(info.state.messages)


async def _drop_stream(js: Any) -> None:
    # Frees the server's disk between repetitions; a failure here must not hide the measurement's own error.
    with contextlib.suppress(Exception):
        await js.delete_stream(STREAM)


# ------------------------------------------------------------------------------------------ the relay (subject)


def relay_drain(context: Context, directory: Path, n: int, *, batch_size: int = BATCH_SIZE,
                metrics: bool = False) -> float:
    """Fill a sqlite buffer (durability "process") with ``n`` messages, untimed; time ``relay.drain()`` until the
    buffer is empty. ``metrics``: with ``pbuffer.metrics.serve()`` on and scraped every second meanwhile."""
    url = _server_url(context)
    buffer = open_buffer(directory, "sqlite", "process")
    try:
        fill(buffer, n)
        return asyncio.run(_relay_drain(url, buffer, n, batch_size, metrics))
    finally:
        buffer.close()


async def _relay_drain(url: str, buffer: pbuffer.Buffer, n: int, batch_size: int, metrics: bool = False) -> float:
    from pbuffer.relay.jetstream import JetStreamTransport

    transport = await JetStreamTransport.connect(url)
    try:
        await _fresh_stream(transport.js)
        relay = pbuffer.Relay(buffer, transport, batch_size=batch_size, close_transport=False)
        try:
            with scraped_metrics(buffer, relay) if metrics else contextlib.nullcontext():
                seconds = await timed_async(relay.drain)
        finally:
            await relay.close()
        stats = relay.stats
        _expect(len(buffer) == 0 and stats.published == n and stats.duplicates == stats.retried == 0
                and stats.dead_lettered == 0, f"{n} messages relayed (stats: {stats}, {len(buffer)} left)")
        _expect(await _stored(transport.js) == n, f"the stream holds {n} messages")
        return seconds
    finally:
        await _drop_stream(transport.js)
        await transport.close()


#: Messages the stage probe drains (once per run, untimed by the harness).
STAGES_COUNT = 20_000


def relay_stages(directory: Path, n: int = STAGES_COUNT) -> str:
    """Where a relay's time goes per message, as a note for the drain case: ``n`` messages drained from a sqlite
    buffer through a nats-server of its own, with each stage's calls timed (wall time, summed): reading and
    claiming windows (the buffer, in its worker thread), publishing a window and awaiting its acks (the
    transport), deleting what was acknowledged (the buffer). The relay runs these concurrently (the next window
    is read and the last one deleted while one is in flight), so the stages add up to more than the drain took."""
    from pbuffer.examples.natsserver import NatsServer

    buffer = open_buffer(directory, "sqlite", "process")
    server = NatsServer(store_dir=directory / "nats").start()
    try:
        fill(buffer, n)
        spent = {"read": 0.0, "publish": 0.0, "delete": 0.0}

        def timed_call(stage: str, call: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return call(*args, **kwargs)
                finally:
                    spent[stage] += time.perf_counter() - started
            return wrapper

        # Instance attributes shadow the methods: the relay's AsyncBuffer calls these in its worker thread.
        buffer.claim = timed_call("read", buffer.claim)  # type: ignore[method-assign]
        buffer.get_all = timed_call("read", buffer.get_all)  # type: ignore[method-assign]
        buffer.delete_many = timed_call("delete", buffer.delete_many)  # type: ignore[method-assign]
        wall = asyncio.run(_drain_timing_publish(server.url, buffer, spent))
    finally:
        server.stop()
        buffer.close()
    per = {stage: seconds / n * 1e6 for stage, seconds in spent.items()}
    return (f"Where the relay's time goes ({n:,} messages, measured once, untimed by the harness): read and claim "
            f"{per['read']:.1f} us/msg, publish and await acks {per['publish']:.1f} us/msg, delete "
            f"{per['delete']:.1f} us/msg, against {wall / n * 1e6:.1f} us/msg of drain wall time (the stages "
            "overlap: the relay reads the next window and deletes the last one while a window is in flight).")


def time_publishes(transport: Any, spent: dict[str, float]) -> None:
    """Add the wall time of every ``transport.publish`` call to ``spent["publish"]`` (an instance attribute shadows
    the method)."""
    publish = transport.publish

    async def timed_publish(messages: Any) -> Any:
        started = time.perf_counter()
        try:
            return await publish(messages)
        finally:
            spent["publish"] += time.perf_counter() - started

    transport.publish = timed_publish


async def _drain_timing_publish(url: str, buffer: pbuffer.Buffer, spent: dict[str, float]) -> float:
    from pbuffer.relay.jetstream import JetStreamTransport

    transport = await JetStreamTransport.connect(url)
    try:
        await _fresh_stream(transport.js)
        time_publishes(transport, spent)
        relay = pbuffer.Relay(buffer, transport, batch_size=BATCH_SIZE, close_transport=False)
        try:
            wall = await timed_async(relay.drain)
        finally:
            await relay.close()
        _expect(len(buffer) == 0 and relay.stats.published == await _stored(transport.js),
                "every message relayed")
        return wall
    finally:
        await _drop_stream(transport.js)
        await transport.close()


#: A subject no stream covers: the stuck one of :func:`relay_drain_behind_a_stuck_subject`.
STUCK_SUBJECT = "nostream.stuck"
#: How many of its messages wait ahead of the healthy ones (the issue's figure).
STUCK_COUNT = 10_000


def relay_drain_behind_a_stuck_subject(context: Context, directory: Path, n: int, *, stuck: int = STUCK_COUNT,
                                       batch_size: int = BATCH_SIZE) -> float:
    """:func:`relay_drain` with ``stuck`` messages of a subject no stream covers saved first, ahead of the ``n``
    healthy ones: timed until every healthy message was published (the stuck ones stay buffered). ``stuck=0`` is
    its baseline, measured the same way."""
    url = _server_url(context)
    buffer = open_buffer(directory, "sqlite", "process")
    try:
        if stuck:
            buffer.save_many([current()] * stuck, subject=STUCK_SUBJECT)
        fill(buffer, n)
        return asyncio.run(_relay_drain_healthy(url, buffer, n, stuck, batch_size))
    finally:
        buffer.close()


async def _relay_drain_healthy(url: str, buffer: pbuffer.Buffer, n: int, stuck: int, batch_size: int) -> float:
    from pbuffer.relay.jetstream import JetStreamTransport

    transport = await JetStreamTransport.connect(url)
    try:
        await _fresh_stream(transport.js)
        relay = pbuffer.Relay(buffer, transport, batch_size=batch_size, close_transport=False)
        drain = asyncio.ensure_future(relay.drain())

        async def healthy_published() -> None:
            while relay.stats.published < n:  # kept current window by window
                if drain.done():
                    drain.result()  # a failed drain raises here
                    break
                await asyncio.sleep(0.002)

        try:
            seconds = await timed_async(healthy_published)
        finally:
            relay.stop()
            await asyncio.wait_for(drain, 30)
            await relay.close()
        _expect(relay.stats.published == n and relay.stats.dead_lettered == 0,
                f"{n} healthy messages relayed past the stuck subject (stats: {relay.stats})")
        _expect(await _stored(transport.js) == n, f"the stream holds {n} messages")
        _expect(len(buffer) == stuck, f"the {stuck} stuck messages are still buffered")
        return seconds
    finally:
        await _drop_stream(transport.js)
        await transport.close()


# -------------------------------------------------------------------------------------------------- baselines


def seed_publish_loop(context: Context, directory: Path, n: int) -> float:
    """The seed's loop, exactly as it was: one awaited ``js.publish(subject, payload)`` per message, no
    Nats-Msg-Id, no buffer."""
    return asyncio.run(_seed_publish_loop(_server_url(context), n))


async def _seed_publish_loop(url: str, n: int) -> float:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await _fresh_stream(js)
        publish, payload = js.publish, current()

        async def run() -> None:
            for _ in range(n):
                await publish(SUBJECT, payload)

        seconds = await timed_async(run)
        _expect(await _stored(js) == n, f"the stream holds {n} messages")
        await _drop_stream(js)
        return seconds
    finally:
        await nc.close()


def ceiling_publish_async(context: Context, directory: Path, n: int) -> float:
    """nats-py's bare pipelined publish, no buffer: every ``publish_async`` first, then every ack."""
    return asyncio.run(_ceiling_publish_async(_server_url(context), n))


async def _ceiling_publish_async(url: str, n: int) -> float:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream(publish_async_max_pending=CEILING_MAX_PENDING)
        await _fresh_stream(js)
        publish_async, payload = js.publish_async, current()
        acks: list[Any] = []

        async def run() -> None:
            futures = [await publish_async(SUBJECT, payload) for _ in range(n)]
            acks.extend(await asyncio.gather(*futures))

        seconds = await timed_async(run)
        _expect(len(acks) == n and all(ack.stream == STREAM for ack in acks), f"{n} PubAcks")
        _expect(await _stored(js) == n, f"the stream holds {n} messages")
        await _drop_stream(js)
        return seconds
    finally:
        await nc.close()


# ------------------------------------------------------------------------------------------------------ memory


def relay_drain_memory(context: Context, directory: Path, n: int, *, batch_size: int = BATCH_SIZE) -> float:
    """MB the process running the relay grows by (peak RSS during the drain minus RSS before it) while draining
    a sqlite backlog of ``n`` messages. Measured in a fresh Python process, so no earlier case's freed heap
    absorbs the growth."""
    url = _server_url(context)
    database = copy_backlog(context, directory, n)
    command = [sys.executable, "-m", __name__, "--url", url, "--database", str(database), "--messages", str(n),
               "--batch-size", str(batch_size)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT, check=False,
                            env=_child_environment())
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"the drain process exited with {result.returncode}: {tail}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Progress (stderr), for the record: the rate of a drain this long, and the two RSS readings.
    print(f"  drained {n:,} messages in {report['seconds']:.1f} s ({report['rate']:,.0f} msg/s); RSS "
          f"{report['before_mb']:.1f} MB before, {report['peak_mb']:.1f} MB at the peak", file=sys.stderr, flush=True)
    return float(report["growth_mb"])


def _child_environment() -> dict[str, str]:
    # This package is "benchmarks" in a checkout (importable from the checkout's root) or "pbuffer.benchmarks"
    # installed: put the directory holding the top-level package first on the child's path either way.
    top = sys.modules[__name__.partition(".")[0]]
    root = str(Path(top.__file__ or ".").resolve().parent.parent)
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(p for p in (root, environment.get("PYTHONPATH")) if p)
    return environment


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is no /proc."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _rss() -> int:
    found = _status_bytes("VmRSS")
    if found is not None:
        return found
    import resource  # no /proc: the peak so far is the best there is

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class _PeakRss:
    """RSS before a block and the highest RSS during it: a thread samples VmRSS every ``interval`` seconds, and
    the kernel's own high-water mark (VmHWM, reset on entry through /proc/self/clear_refs) catches a peak
    between samples."""

    def __init__(self, interval: float = SAMPLE_INTERVAL) -> None:
        self.interval = interval
        self.before = self.peak = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> _PeakRss:
        self.before = self.peak = _rss()
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
                clear_refs.write("5")  # 5: reset the peak RSS (Linux >= 4.0)
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        hwm = _status_bytes("VmHWM") if self.hwm_reset else None
        if hwm is not None:
            self.peak = max(self.peak, hwm)


async def _drain_watched(url: str, database: Path, n: int, batch_size: int) -> dict[str, Any]:
    from pbuffer.relay.jetstream import JetStreamTransport

    buffer = pbuffer.open(f"sqlite:///{database}", durability="process")
    try:
        transport = await JetStreamTransport.connect(url)
        try:
            await _fresh_stream(transport.js)
            relay = pbuffer.Relay(buffer, transport, batch_size=batch_size, close_transport=False)
            _expect(len(buffer) == n, f"a backlog of {n} messages")
            gc.collect()
            with _PeakRss() as rss:
                seconds = await timed_async(relay.drain)
            await relay.close()
            stats = relay.stats
            _expect(len(buffer) == 0 and stats.published == n, f"{n} messages relayed (stats: {stats})")
            _expect(await _stored(transport.js) == n, f"the stream holds {n} messages")
        finally:
            await _drop_stream(transport.js)
            await transport.close()
    finally:
        buffer.close()
    return {"messages": n, "seconds": seconds, "rate": n / max(seconds, 1e-9), "before_mb": rss.before / MB,
            "peak_mb": rss.peak / MB, "growth_mb": max(0, rss.peak - rss.before) / MB, "hwm_reset": rss.hwm_reset}


def _child(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Drain a sqlite backlog through a relay; print its RSS growth.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--database", required=True, type=Path)
    parser.add_argument("--messages", required=True, type=int)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = parser.parse_args(argv)
    report = asyncio.run(_drain_watched(args.url, args.database, args.messages, args.batch_size))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    _child()
