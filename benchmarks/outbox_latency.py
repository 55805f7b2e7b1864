"""Commit-to-stream latency at 100 msg/s with the relay in another process: the README's outbox figures.

    python -m benchmarks.outbox_latency URL MODE [COUNT]

URL: a PostgreSQL or MariaDB URL whose server may create a database ``pbuffer_outbox_latency`` (dropped and made
again), or ``sqlite`` for a temporary file. MODE: ``outbox`` (save(..., connection=) and the caller's commit) or
``plain`` (save()). A nats-server of its own with a stream; a relay started as a separate process (``--relay``),
``poll_interval=1``; a core subscriber on the stream's subject notes when each message arrives (about when its
PubAck is sent). Prints the median, 99th percentile and worst latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

import pbuffer
from pbuffer.examples.natsserver import NatsServer
from pbuffer.relay import Relay
from pbuffer.relay.jetstream import JetStreamTransport

DATABASE = "pbuffer_outbox_latency"
RATE = 100.0


def _fresh_database(url: str) -> str:
    if url == "sqlite":
        return f"sqlite:///{tempfile.mkdtemp()}/buffer.db"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    force = " WITH (FORCE)" if admin.dialect.name == "postgresql" else ""
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {DATABASE}{force}")
        conn.exec_driver_sql(f"CREATE DATABASE {DATABASE}")
    admin.dispose()
    return sa.make_url(url).set(database=DATABASE).render_as_string(hide_password=False)


async def _measure(url: str, mode: str, count: int) -> list[float]:
    import nats

    buf = pbuffer.open(url, auto_upgrade=True)
    options = {"isolation_level": "READ COMMITTED"} if url.startswith(("mysql", "mariadb")) else {}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, **options)
    with NatsServer(store_dir=Path(tempfile.mkdtemp()) / "nats") as server:
        nc = await nats.connect(server.url)
        await nc.jetstream().add_stream(name="LATENCY", subjects=["latency.>"])
        arrived: dict[str, float] = {}

        async def on_message(msg: object) -> None:
            arrived[msg.headers["Nats-Msg-Id"]] = time.time()  # type: ignore[attr-defined]

        await nc.subscribe("latency.>", cb=on_message)
        relay = subprocess.Popen([sys.executable, "-m", "benchmarks.outbox_latency", "--relay", url, server.url])
        await asyncio.sleep(3)  # the relay is up and waiting
        committed: dict[str, float] = {}

        def save_one() -> None:
            if mode == "outbox":
                with engine.connect() as conn:
                    message = buf.save(b"x" * 100, subject="latency.a", connection=conn)
                    conn.commit()
            else:
                message = buf.save(b"x" * 100, subject="latency.a")
            committed[message.id] = time.time()

        started = time.monotonic()
        for number in range(count):
            await asyncio.sleep(max(0.0, started + number / RATE - time.monotonic()))
            await asyncio.to_thread(save_one)
        await asyncio.sleep(3)
        relay.terminate()
        relay.wait()
        await nc.close()
    buf.close()
    engine.dispose()
    missing = set(committed) - set(arrived)
    if missing:
        raise SystemExit(f"{len(missing)} committed messages never arrived")
    return sorted((arrived[key] - at) * 1000 for key, at in committed.items())


async def _relay(url: str, nats_url: str) -> None:
    buf = pbuffer.open(url)
    async with Relay(buf, await JetStreamTransport.connect(nats_url), poll_interval=1.0) as relay:
        await relay.run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("url")
    parser.add_argument("mode")
    parser.add_argument("count", nargs="?", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.relay:
        asyncio.run(_relay(args.url, args.mode))  # (the relay's arguments: the buffer URL and the NATS URL)
        return
    url = _fresh_database(args.url)
    latencies = asyncio.run(_measure(url, args.mode, args.count))
    print(f"{sa.make_url(url).get_backend_name()} {args.mode}: {len(latencies)} messages at {RATE:.0f} msg/s; median "
          f"{statistics.median(latencies):.1f} ms, p99 {latencies[int(len(latencies) * 0.99) - 1]:.1f} ms, worst "
          f"{latencies[-1]:.1f} ms")


if __name__ == "__main__":
    main()
