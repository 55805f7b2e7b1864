"""Where a relay's drain stands against bare ``publish_async``, measured side by side in one process (issue 15).

``python -m benchmarks.relay_pipeline [--messages N] [--rounds R] [--stages]`` starts one nats-server of its own
(file storage) and runs, in each round, three timed sections in turn, each on a fresh stream and (for the relay)
a freshly filled sqlite buffer (durability "process", 100-byte payloads, one subject; the fill is untimed):

- ``ceiling``: nats-py alone, no buffer: every ``js.publish_async`` first, then every ack (as e2e.py's ceiling);
- ``plain``: ``Relay(buffer, JetStreamTransport).drain()`` into a stream without ``allow_batched``;
- ``batched``: the same drain into a stream created with ``allow_batched: true`` (fast-ingest batches; the raw
  API, since nats-py 2.16's StreamConfig has no such field).

Each line printed is one section: its rate, its ratio to the ceiling of the same round, and the CPU the process
spent per message (all threads: the event loop plus the buffer's worker threads). ``--stages`` also times the
relay's stages: claim, publish and acks, delete as wall time summed per call (overlapping stages add up to more
than the drain), and ``claim_cpu``/``delete_cpu``, the CPU the worker thread spent in those calls (the rest of
their wall time is waiting: for the buffer's write lock, or for the GIL). The summary gives medians and ranges
over the rounds. ``--windows N`` passes ``windows_in_flight=N`` to the Relay (for a relay that has it).
``--profile DIR`` runs each drain under cProfile (the event loop's thread, and the worker threads' claim and
delete calls on their own) and writes the top entries to ``DIR/relay-<kind>-<stage>.txt`` (last round's); the
profiled rates are slower than unprofiled ones and not comparable.

Findings of December 2026 (load 2-7 on 2 cores, so single runs vary by +-40%): ``results/
2026-12-01-8eb891a-relay-pipeline.md``, and after issue 15's client-side work ``results/
2026-12-01-801ef2b-relay-pipeline.md``. ``--batch-size N`` passes ``batch_size=N`` to the Relay.

Runs against whichever ``pbuffer`` is first on the path: ``PYTHONPATH=<another checkout> python
benchmarks/relay_pipeline.py`` measures that checkout with the same script (before/after in one session).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pbuffer

from .e2e import time_publishes

STREAM = "RELAYBENCH"
SUBJECT = "bench.x"
PAYLOAD = b"x" * 100
FILL_CHUNK = 10_000


async def _create_stream(nc: Any, *, batched: bool) -> None:
    body: dict[str, Any] = {"name": STREAM, "subjects": [SUBJECT], "storage": "file"}
    if batched:
        body["allow_batched"] = True
    with contextlib.suppress(Exception):
        await nc.request(f"$JS.API.STREAM.DELETE.{STREAM}", b"", timeout=10)
    reply = json.loads((await nc.request(f"$JS.API.STREAM.CREATE.{STREAM}", json.dumps(body).encode(),
                                         timeout=10)).data)
    if "error" in reply:
        raise RuntimeError(f"stream create failed: {reply['error']}")
    if batched and reply["config"].get("allow_batched") is not True:
        raise RuntimeError("the server did not keep allow_batched (nats-server >= 2.14 needed)")


async def _stored(nc: Any) -> int:
    reply = json.loads((await nc.request(f"$JS.API.STREAM.INFO.{STREAM}", b"", timeout=10)).data)
    return int(reply["state"]["messages"])


async def _drop_stream(nc: Any) -> None:
    with contextlib.suppress(Exception):
        await nc.request(f"$JS.API.STREAM.DELETE.{STREAM}", b"", timeout=10)


async def ceiling(url: str, n: int) -> dict[str, float]:
    import nats

    nc = await nats.connect(url)
    try:
        await _create_stream(nc, batched=False)
        js = nc.jetstream(publish_async_max_pending=1_000_000)
        publish_async = js.publish_async
        cpu, started = time.process_time(), time.perf_counter()
        futures = [await publish_async(SUBJECT, PAYLOAD) for _ in range(n)]
        acks = await asyncio.gather(*futures)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        assert len(acks) == n and await _stored(nc) == n
        await _drop_stream(nc)
        return {"seconds": seconds, "cpu_us": cpu / n * 1e6}
    finally:
        await nc.close()


def drain(url: str, directory: Path, n: int, *, batched: bool, stages: bool,
          relay_options: dict[str, Any] | None = None, profile: Path | None = None) -> dict[str, float]:
    path = directory / f"buffer-{time.monotonic_ns()}.db"
    buffer = pbuffer.open(f"sqlite:///{path}", durability="process")
    try:
        for start in range(0, n, FILL_CHUNK):
            buffer.save_many([PAYLOAD] * min(FILL_CHUNK, n - start), subject=SUBJECT)
        profiles = {stage: cProfile.Profile() for stage in ("loop", "claim", "delete")} if profile else None
        result = asyncio.run(_drain(url, buffer, n, batched, stages, relay_options or {}, profiles))
        if profile is not None and profiles is not None:
            kind = "batched" if batched else "plain"
            for stage, profiler in profiles.items():
                _write_profile(profiler, profile / f"relay-{kind}-{stage}.txt",
                               f"relay drain of {n:,} x 100 B into a {kind} stream, {n / result['seconds']:,.0f} "
                               f"msg/s under cProfile: {stage}")
        return result
    finally:
        buffer.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _write_profile(profiler: cProfile.Profile, path: Path, title: str, top: int = 30) -> None:
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    for order in ("tottime", "cumulative"):
        text.write(f"\n=== top {top} by {order} ===\n")
        stats.sort_stats(order).print_stats(top)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{title}\n{text.getvalue()}")


async def _drain(url: str, buffer: pbuffer.Buffer, n: int, batched: bool, stages: bool,
                 relay_options: dict[str, Any],
                 profiles: dict[str, cProfile.Profile] | None = None) -> dict[str, float]:
    from pbuffer.relay.jetstream import JetStreamTransport

    transport = await JetStreamTransport.connect(url)
    if profiles is not None:
        def profiled_call(stage: str, call: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                profiles[stage].enable()  # in the worker thread running this call
                try:
                    return call(*args, **kwargs)
                finally:
                    profiles[stage].disable()
            return wrapper

        buffer.claim = profiled_call("claim", buffer.claim)  # type: ignore[method-assign]
        buffer.delete_many = profiled_call("delete", buffer.delete_many)  # type: ignore[method-assign]
    spent = {"claim": 0.0, "claim_cpu": 0.0, "publish": 0.0, "delete": 0.0, "delete_cpu": 0.0}
    if stages:
        def timed_call(stage: str, call: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                started, cpu = time.perf_counter(), time.thread_time()
                try:
                    return call(*args, **kwargs)
                finally:
                    spent[stage] += time.perf_counter() - started
                    spent[f"{stage}_cpu"] += time.thread_time() - cpu
            return wrapper

        # Instance attributes shadow the methods: the relay's AsyncBuffer calls these in its worker threads.
        buffer.claim = timed_call("claim", buffer.claim)  # type: ignore[method-assign]
        buffer.delete_many = timed_call("delete", buffer.delete_many)  # type: ignore[method-assign]
        time_publishes(transport, spent)
    try:
        await _create_stream(transport.nc, batched=batched)
        relay = pbuffer.Relay(buffer, transport, close_transport=False, **relay_options)
        cpu, started = time.process_time(), time.perf_counter()
        if profiles is not None:
            profiles["loop"].enable()
        await relay.drain()
        if profiles is not None:
            profiles["loop"].disable()
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        await relay.close()
        stats = relay.stats
        if not (len(buffer) == 0 and stats.published == n and stats.retried == 0 and stats.dead_lettered == 0):
            raise RuntimeError(f"drain incomplete: {stats}, {len(buffer)} left")
        if await _stored(transport.nc) != n:
            raise RuntimeError("the stream does not hold every message")
        result = {"seconds": seconds, "cpu_us": cpu / n * 1e6}
        if stages:
            result.update({f"{stage}_us": value / n * 1e6 for stage, value in spent.items()})
        if batched:
            result["fast_ingested"] = float(transport.fast_ingested)
        return result
    finally:
        await _drop_stream(transport.nc)
        await transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", action="store_true", help="time the relay's stages too")
    parser.add_argument("--label", default="", help="a name for this run's lines (e.g. before/after)")
    parser.add_argument("--windows", type=int, help="Relay(windows_in_flight=...), where the relay has it")
    parser.add_argument("--batch-size", type=int, help="Relay(batch_size=...) (default: the Relay's)")
    parser.add_argument("--only", choices=("plain", "batched"), help="drain only into this kind of stream")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="cProfile each drain; write the reports here")
    args = parser.parse_args(argv)
    from pbuffer.examples.natsserver import NatsServer

    n = args.messages
    label = args.label or Path(pbuffer.__file__).resolve().parent.parent.name
    options: dict[str, Any] = {} if args.windows is None else {"windows_in_flight": args.windows}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    kinds = [kind for kind in ("plain", "batched") if args.only in (None, kind)]
    rows: dict[str, list[dict[str, float]]] = {"ceiling": [], **{kind: [] for kind in kinds}}
    with tempfile.TemporaryDirectory(prefix="pbuffer-relay-pipeline-") as root:
        server = NatsServer(store_dir=Path(root) / "nats").start()
        try:
            for round_ in range(args.rounds):
                base = asyncio.run(ceiling(server.url, n))
                rows["ceiling"].append(base)
                line = [f"{label} round {round_ + 1}: ceiling {n / base['seconds']:,.0f}/s cpu {base['cpu_us']:.1f}us"]
                for kind in kinds:
                    result = drain(server.url, Path(root), n, batched=kind == "batched", stages=args.stages,
                                   relay_options=options, profile=args.profile)
                    result["ratio"] = base["seconds"] / result["seconds"]
                    rows[kind].append(result)
                    extra = "".join(f" {k[:-3]} {v:.1f}" for k, v in result.items() if k.endswith("_us")
                                    and k != "cpu_us")
                    line.append(f"{kind} {n / result['seconds']:,.0f}/s {result['ratio']:.2f}x cpu "
                                f"{result['cpu_us']:.1f}us{extra}")
                print(" | ".join(line), flush=True)
        finally:
            server.stop()
    summary = [f"{label} medians over {args.rounds} rounds of {n:,}:"]
    for kind, results in rows.items():
        rates = [n / r["seconds"] for r in results]
        text = f"{kind} {statistics.median(rates):,.0f}/s [{min(rates):,.0f}-{max(rates):,.0f}]"
        if kind != "ceiling":
            ratios = [r["ratio"] for r in results]
            text += f" {statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
        text += f" cpu {statistics.median(r['cpu_us'] for r in results):.1f}us/msg"
        summary.append(text)
    print(" ".join(summary), flush=True)


if __name__ == "__main__":
    main()
