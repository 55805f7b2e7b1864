"""The table of cases. A new backend or peer is a new row here; the harness and the report need no change.

Message counts are full-mode / quick-mode sizes before ``--scale``. Full mode runs every case; quick mode runs the
cases marked ``headline`` (the targets and one figure of each kind), sized to keep it under a minute on a 2-core
machine. Targets are the issue's, unchanged: a missed one is reported as missed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

from . import e2e, peers, processes, servers, url_cases, workloads
from .core_cases import POP_SERIES, core_cases, server_core_case
from .harness import Case, Settings, Target, count_label
from .payload import DEFAULT_BYTES
from .workloads import MEMORY, SQLITE, SQLITE_POWER, Store

__all__ = ["BACKENDS", "OPS", "build_cases"]

OPS = ("save", "save_many", "pop", "pop_backlog", "backlog", "get", "get_all", "delete", "claim", "processes",
       "group_commit", "stats", "drain")
BACKENDS = ("memory", "sqlite", "postgresql", "mariadb", "nats")

#: The payload-size cases (the 100-byte ones are the cases tagged with the same series).
PAYLOAD_1KIB = b"x" * 1024
PAYLOAD_64KIB = b"x" * (64 * 1024)
SAVE_SERIES = "sqlite save()"
#: The big backlog (pop backlog, drain.memory, sqlite.stats 1M): the issue's million, fewer in quick mode. One
#: file of each size is written per run and copied for every repetition of every case that needs it.
BIG_BACKLOG = 1_000_000
QUICK_BACKLOG = 50_000

_PQ_DEFAULTS = (
    "persist-queue 1.1 sets only PRAGMA journal_mode=WAL on its connections (sqlbase.SQLiteBase._new_db_connection) "
    "and leaves synchronous at sqlite's default, FULL: stronger than pbuffer's durability='process' (NORMAL). "
)
_PQ_SETUP = "SQLiteAckQueue(auto_commit=True, multithreading=True); items are pickled."
_LQ_DEFAULTS = (
    "litequeue sets journal_mode=WAL, synchronous=NORMAL (the same durability as 'process'), temp_store=MEMORY "
    "and a 256 MB cache_size; it stores text, so the payload is put as a str of the same length. "
)


_E2E_SETUP = (
    "Subject: a sqlite buffer (durability='process') filled with save_many (untimed), then "
    f"Relay(buffer, JetStreamTransport.connect(url), batch_size={e2e.BATCH_SIZE}).drain() timed until the buffer "
    "is empty: each message goes out with Nats-Msg-Id = its id (the stream deduplicates) and each window is "
    "deleted from the buffer after its PubAcks; checked afterwards: the buffer is empty, stats.published equals "
    f"the count and the stream holds that many. Batch size {e2e.BATCH_SIZE} kept over 1,000: in a paired A/B run "
    "here (9 repetitions of 50,000) 1,000 ran at 0.96x the rate of 500 (ratios 0.90-1.21x: noise, no gain). "
    "One nats-server per case (version in the header), started untimed, file storage (the default); each "
    "repetition gets a fresh stream on the subject, created untimed and deleted afterwards. "
)


def _e2e_counts(settings: Settings) -> str:
    text = ""
    if settings.quick:
        text += " Quick mode: smaller counts than full mode's."
    if settings.scale != 1:
        text += f" Scaled by {settings.scale:g}."
    return text


def build_cases(settings: Settings) -> list[Case]:
    """Every case of this mode (quick mode's are those marked ``headline``). With ``settings.url``: only the core
    operations on that buffer (:mod:`.url_cases`). With ``settings.payload``: every case at that size, and the
    payload-size cases (which would repeat the others) left out."""
    cases = url_cases.url_cases(settings) if settings.url else _builtin_cases(settings)
    if settings.payload is None:
        return cases
    return [dataclasses.replace(case, payload_bytes=settings.payload) for case in cases
            if case.payload_bytes == DEFAULT_BYTES]


def _builtin_cases(settings: Settings) -> list[Case]:
    count = settings.count
    e2e_n = count(50_000, 10_000)
    seed_n = count(5_000, 1_000)
    memory_n = count(BIG_BACKLOG, QUICK_BACKLOG)
    memory_reps = 1 if settings.quick else 3
    memory_note = (
        f"Peak RSS growth of the process running the relay while Relay(batch_size={e2e.BATCH_SIZE}).drain() "
        f"empties a sqlite buffer (durability='process') holding {memory_n:,} messages, copied from a file written "
        "once per run with save_many. Each repetition runs in a fresh Python process, so no earlier case's freed "
        "heap can absorb the growth: it opens the buffer, connects, creates the stream, collects garbage, reads "
        "VmRSS (before), resets the kernel's peak (VmHWM, via /proc/self/clear_refs), drains while a thread "
        "samples VmRSS every 50 ms, and reports max(samples, VmHWM) - before, in MB of 10^6 bytes. The target "
        "is judged on the largest growth over the repetitions. nats-server's own memory (another process) is "
        "not counted. No warm-up (each repetition is a fresh process)"
    )
    if settings.reps is None:
        memory_note += (f"; {memory_reps} repetition{'s' if memory_reps != 1 else ''}, not the mode's usual "
                        "count: a full-size drain takes minutes.")
    else:
        memory_note += f"; {settings.reps} repetition(s) (--reps)."
    if settings.quick:
        memory_note += f" Quick mode: the backlog is {QUICK_BACKLOG:,}, not the issue's {BIG_BACKLOG:,}."
    if settings.scale != 1:
        memory_note += f" Scaled by {settings.scale:g}."
    big_backlog = count(BIG_BACKLOG, QUICK_BACKLOG)
    pq_waiting, pq_pops = count(10_000), count(5_000, 2_000)
    small_backlog = count(1_000)
    backlog_note = (
        f"pop() timed from the front of a buffer holding {big_backlog:,} messages (subject) and {small_backlog:,} "
        f"(baseline; its pops run in rounds of {small_backlog:,}, refilled untimed in between). Each repetition "
        "opens a fresh copy of a backlog file written once per run with save_many."
    )
    if settings.quick:
        backlog_note += f" Quick mode: the big backlog is {QUICK_BACKLOG:,}, not the issue's {BIG_BACKLOG:,}."
    if settings.scale != 1:
        backlog_note += f" Scaled by {settings.scale:g}."

    cases = [
        Case(
            name="sqlite.save vs sqlite3", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label="sqlite3 loop", baseline=workloads.sqlite3_loop,
            count=count(20_000, 5_000),
            target=Target("sqlite save() >= 0.6x plain sqlite3 loop", "min_ratio", 0.6),
            note="Baseline: python sqlite3, WAL, synchronous=NORMAL, one BEGIN IMMEDIATE; INSERT; COMMIT per "
                 "message into (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL).",
            series=SAVE_SERIES,
            headline=True,
        ),
        Case(
            name="sqlite[power].save vs seed buffer", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [power]", subject=partial(workloads.buffer_save, store=SQLITE_POWER),
            baseline_label="the seed's Buffer.save(): sqlite3 defaults", baseline=workloads.seed_buffer_save,
            count=count(3_000, 500),
            note="Baseline: the original design's approach, python sqlite3 with sqlite's defaults (rollback journal, "
                 "synchronous=FULL: several fsyncs per commit) and a commit per message into (id INTEGER PRIMARY "
                 "KEY AUTOINCREMENT, subject, payload). Equal durability: both survive power loss, so pbuffer runs "
                 "with durability='power' (WAL, synchronous=FULL: one fsync per commit). No target; for context.",
        ),
        Case(
            name="sqlite.save vs persist-queue", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label="persist-queue put() [NORMAL]",
            baseline=partial(peers.persistqueue_put, synchronous="NORMAL"),
            count=count(10_000, 4_000),
            target=Target("sqlite save() >= 0.85x persist-queue put(), equal durability", "min_ratio", 0.85),
            note=_PQ_DEFAULTS + "For equal durability this case sets synchronous=NORMAL on its connections after "
                 "opening; 'sqlite.save[power] vs persist-queue[default]' compares at its default. The core-speed "
                 "issue's target (0.85x) replaces the first core issue's 3x. " + _PQ_SETUP,
            requires=("persistqueue",), probe=partial(peers.persistqueue_pragmas, synchronous="NORMAL"),
            headline=True,
        ),
        Case(
            name="sqlite.save[power] vs persist-queue[default]", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [power]",
            subject=partial(workloads.buffer_save, store=SQLITE_POWER),
            baseline_label="persist-queue put() [default FULL]", baseline=peers.persistqueue_put,
            count=count(3_000, 1_000),
            note=_PQ_DEFAULTS + "Here both sides run with synchronous=FULL (pbuffer durability='power'): an fsync "
                 "per commit, so this measures the disk. No target; for context. " + _PQ_SETUP,
            requires=("persistqueue",), probe=peers.persistqueue_pragmas,
        ),
        Case(
            name="sqlite.save vs persist-queue[default]", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label="persist-queue put() [default FULL]", baseline=peers.persistqueue_put,
            count=count(5_000, 2_000),
            note="UNEQUAL durability, shown only because it is persist-queue's out-of-the-box setting: its "
                 "default synchronous=FULL (an fsync per commit) keeps more than pbuffer's 'process' (NORMAL), so "
                 "this ratio flatters pbuffer. No target; the target is judged at equal durability above. "
                 + _PQ_SETUP,
            requires=("persistqueue",), probe=peers.persistqueue_pragmas,
        ),
        Case(
            name="sqlite.save vs litequeue", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label="litequeue put()", baseline=peers.litequeue_put,
            count=count(10_000, 4_000),
            note=_LQ_DEFAULTS + "put() is one INSERT in autocommit mode. No target; for context.",
            requires=("litequeue",), probe=peers.litequeue_pragmas,
        ),
        *[
            Case(
                name=f"sqlite.save {label} vs sqlite3", op="save", backend="sqlite",
                subject_label="pbuffer sqlite save() [process]",
                subject=partial(workloads.buffer_save, payload=payload),
                baseline_label="sqlite3 loop", baseline=partial(workloads.sqlite3_loop, payload=payload),
                count=count(*counts), payload_bytes=len(payload), series=SAVE_SERIES,
                note=f"As 'sqlite.save vs sqlite3' with {len(payload):,}-byte payloads. No target; for context.",
            )
            for label, payload, counts in (("1KiB", PAYLOAD_1KIB, (8_000, 3_000)),
                                           ("64KiB", PAYLOAD_64KIB, (2_000, 400)))
        ],
        Case(
            name="sqlite.save_many", op="save_many", backend="sqlite",
            subject_label="pbuffer sqlite save_many() [process]", subject=workloads.buffer_save_many,
            baseline_label="sqlite3 executemany", baseline=workloads.sqlite3_executemany,
            count=count(50_000, 20_000),
            target=Target("sqlite save_many() >= 250,000 msg/s", "min_rate", 250_000),
            note="Batches of 1,000 messages per save_many() call. Baseline (for context; the target is absolute): "
                 "python sqlite3 executemany, one BEGIN IMMEDIATE transaction per 1,000 rows, same pragmas and "
                 "table as the sqlite3 loop.",
            headline=True,
        ),
        Case(
            name=f"sqlite.pop {count_label(pq_pops)} of {count_label(pq_waiting)} waiting vs persist-queue",
            op="pop", backend="sqlite",
            subject_label="pbuffer sqlite pop() [process]",
            subject=partial(workloads.buffer_pop, waiting=pq_waiting),
            baseline_label="persist-queue get()+ack() [NORMAL]",
            baseline=partial(peers.persistqueue_pop, synchronous="NORMAL", waiting=pq_waiting),
            count=pq_pops,
            target=Target(f"sqlite pop() >= 4x persist-queue get()+ack() with {pq_waiting:,} waiting", "min_ratio",
                          4.0),
            note=_PQ_DEFAULTS + "For equal durability this case sets synchronous=NORMAL on its connections. Both "
                 f"start with {pq_waiting:,} messages waiting (the core-speed issue's count; pbuffer filled with "
                 f"save_many, persist-queue with put(), untimed) and pop the first {pq_pops:,} of them, one at a "
                 "time. persist-queue keeps acked rows (status=5) until clear_acked_data() and its get() scans "
                 "past them in id order, so its rate falls as a repetition proceeds: the ratio grows with the "
                 f"count popped (popping all {pq_waiting:,} took 12 s a repetition on persist-queue's side here). "
                 "The core-speed issue's target, 4x, replaces the first core issue's 5x (which popped 5,000 of "
                 "5,000). " + _PQ_SETUP,
            requires=("persistqueue",), probe=partial(peers.persistqueue_pragmas, synchronous="NORMAL"),
            headline=True,
        ),
        Case(
            name="sqlite.pop vs litequeue", op="pop", backend="sqlite",
            subject_label="pbuffer sqlite pop() [process]", subject=workloads.buffer_pop,
            baseline_label="litequeue pop()+done()", baseline=peers.litequeue_pop,
            count=count(5_000, 2_000),
            note=_LQ_DEFAULTS + "done() marks the row DONE and keeps it (prune() deletes). No target; for context.",
            requires=("litequeue",), probe=peers.litequeue_pragmas,
        ),
        *[
            Case(
                name=f"sqlite.pop {label}", op="pop", backend="sqlite",
                subject_label="pbuffer sqlite pop() [process]",
                subject=partial(workloads.buffer_pop, payload=payload),
                count=count(*counts), payload_bytes=len(payload), series=POP_SERIES,
                note=f"pop() of {len(payload):,}-byte payloads from a buffer filled (untimed) with exactly the "
                     "messages to be popped. No baseline and no target; for context.",
            )
            for label, payload, counts in (("1KiB", PAYLOAD_1KIB, (5_000, 2_000)),
                                           ("64KiB", PAYLOAD_64KIB, (1_500, 400)))
        ],
        Case(
            name="sqlite.pop backlog", op="pop_backlog", backend="sqlite",
            subject_label=f"pop() with {big_backlog:,} waiting",
            subject=partial(workloads.buffer_pop_backlog, backlog=big_backlog),
            baseline_label=f"pop() with {small_backlog:,} waiting",
            baseline=partial(workloads.buffer_pop_backlog, backlog=small_backlog),
            count=count(10_000, 3_000),
            target=Target(f"sqlite pop() with {big_backlog:,} waiting >= 0.5x its rate with {small_backlog:,} waiting "
                          "(within 2x)", "min_ratio", 0.5),
            note=backlog_note + " The ratio is rate(big)/rate(small); 'within 2x' is a ratio of at least 0.5x.",
            headline=True,
        ),
        Case(
            name="memory.save", op="save", backend="memory",
            subject_label="pbuffer memory save()", subject=partial(workloads.buffer_save, store=MEMORY),
            count=count(100_000, 40_000),
            target=Target("memory save() >= 300,000 msg/s", "min_rate", 300_000),
            note="The core-speed issue's absolute target (300,000 msg/s; the first core issue asked 250,000). "
                 "'memory.save vs deque loop' measures the same beside a pinned floor.",
            headline=True,
        ),
        Case(
            name="memory.save_many", op="save_many", backend="memory",
            subject_label="pbuffer memory save_many()",
            subject=partial(workloads.buffer_save_many, store=MEMORY),
            count=count(100_000, 40_000),
            note="Batches of 1,000 messages per call. No target; for context.",
        ),
        Case(
            name="memory.pop", op="pop", backend="memory",
            subject_label="pbuffer memory pop()", subject=partial(workloads.buffer_pop, store=MEMORY),
            count=count(50_000, 20_000),
            note="No target; for context.",
        ),
        Case(
            name="drain.e2e vs seed", op="drain", backend="nats",
            subject_label=f"sqlite -> relay drain() [batch {e2e.BATCH_SIZE}]", subject=e2e.relay_drain,
            baseline_label="seed loop: await js.publish()", baseline=e2e.seed_publish_loop,
            count=e2e_n, baseline_count=seed_n,
            target=Target("end to end >= 10x the seed's loop (the relay issue; the first asked 5x)", "min_ratio", 10.0),
            note=_E2E_SETUP + "Baseline: the seed's loop exactly as the seed wrote it, one awaited "
                 "js.publish(subject, payload) per message on nats.connect()/nc.jetstream() with their defaults: "
                 "no Nats-Msg-Id (so the server does no deduplication for it), no buffer, nothing deleted. The "
                 f"relay drains {e2e_n:,} messages per repetition and the seed loop publishes {seed_n:,} (it is "
                 "slow); rates are per message, so the counts may differ. The subject is measured again in "
                 "'drain.e2e vs ceiling', each time paired with that case's baseline." + _e2e_counts(settings),
            skip_if=e2e.nats_missing,
            headline=True,
        ),
        Case(
            name="drain.e2e vs ceiling", op="drain", backend="nats",
            subject_label=f"sqlite -> relay drain() [batch {e2e.BATCH_SIZE}]", subject=e2e.relay_drain,
            baseline_label="bare js.publish_async(), no buffer", baseline=e2e.ceiling_publish_async,
            count=e2e_n,
            target=Target("end to end >= 1.0x bare publish_async (the ceiling; the relay issue, the first asked 0.6x)",
                          "min_ratio", 1.0),
            note=_E2E_SETUP + "Baseline (the ceiling): nats-py alone, no buffer: futures = [await "
                 "js.publish_async(subject, payload) for each message]; await asyncio.gather(*futures), with no "
                 "wait_stall, on a JetStreamContext made with "
                 f"publish_async_max_pending={e2e.CEILING_MAX_PENDING:,} so it never stalls (nats-py's default, "
                 "4,000, would make it wait for acks part way); no Nats-Msg-Id, default connection options. "
                 f"Both sides move {e2e_n:,} messages per repetition." + _e2e_counts(settings),
            probe=e2e.relay_stages,
            skip_if=e2e.nats_missing,
            headline=True,
        ),
        Case(
            name="sqlite.save with metrics", op="save", backend="sqlite",
            subject_label="save() while pbuffer.metrics.serve() is scraped every second",
            subject=partial(workloads.buffer_save, metrics=True),
            baseline_label="save(), no metrics", baseline=workloads.buffer_save,
            count=count(20_000, 5_000),
            target=Target("metrics cost nothing measurable on save() (>= 0.95x)", "min_ratio", 0.95),
            note="Both sides: single save() calls on a sqlite buffer (durability='process'); the subject also serves "
                 "/metrics and a thread fetches it every second (each scrape reads stats() and subject_stats()).",
            requires=("prometheus_client",),
        ),
        Case(
            name="drain.e2e with metrics", op="drain", backend="nats",
            subject_label=f"relay drain() with pbuffer.metrics.serve() scraped every second [batch {e2e.BATCH_SIZE}]",
            subject=partial(e2e.relay_drain, metrics=True),
            baseline_label="the same relay drain(), no metrics", baseline=e2e.relay_drain,
            count=e2e_n,
            target=Target("metrics cost < 5% of the drain's throughput", "min_ratio", 0.95),
            note=_E2E_SETUP + "Subject: the same drain with pbuffer.metrics.serve(buffer, relay, port=0) on and a "
                 "thread fetching /metrics every second; baseline: no observer, no server." + _e2e_counts(settings),
            skip_if=e2e.nats_missing,
            requires=("prometheus_client",),
        ),
        Case(
            name="drain.e2e behind a stuck subject", op="drain", backend="nats",
            subject_label=f"relay drain() with {e2e.STUCK_COUNT:,} messages of a stuck subject ahead",
            subject=e2e.relay_drain_behind_a_stuck_subject,
            baseline_label="the same relay drain(), nothing stuck",
            baseline=partial(e2e.relay_drain_behind_a_stuck_subject, stuck=0),
            count=e2e_n,
            target=Target("healthy subjects behind a stuck one >= 0.8x their throughput alone", "min_ratio", 0.8),
            note=_E2E_SETUP + f"Subject: the same, with {e2e.STUCK_COUNT:,} messages on a subject no stream covers "
                 f"({e2e.STUCK_SUBJECT}) saved ahead of the {e2e_n:,} healthy ones, timed until every healthy "
                 "message was published (the relay holds the stuck subject back on its own backoff and its "
                 "windows pass over it; the stuck messages stay buffered). Baseline: the healthy messages alone, "
                 "timed the same way (until every one was published)."
                 + _e2e_counts(settings),
            skip_if=e2e.nats_missing,
            headline=True,
        ),
        Case(
            name="drain.memory", op="drain", backend="nats",
            subject_label=f"RSS growth draining {memory_n:,}", subject=e2e.relay_drain_memory,
            count=memory_n, unit="MB", reps=memory_reps, warmup=False,
            target=Target(f"draining a {memory_n:,}-message backlog grows the process < 100 MB", "below", 100.0),
            note=memory_note,
            skip_if=e2e.nats_missing,
            headline=True,
        ),
        ]
    drain = [case for case in cases if case.op == "drain"]
    return [*(case for case in cases if case.op != "drain"), *core_cases(settings), *_operation_cases(settings),
            *_process_cases(settings),
            *_group_commit_cases(settings), *_stats_cases(settings), *_backlog_cases(settings), *drain]


# ------------------------------------------------------------------------------- operations on every backend


def _server_stores(settings: Settings) -> list[Store]:
    return [Store("postgresql", admin_url=settings.postgresql), Store("mariadb", admin_url=settings.mariadb)]


def _prefix(store: Store) -> str:
    """The case-name prefix of a store: ``sqlite`` (durability "process"), ``sqlite[power]``, ``memory``..."""
    return "sqlite[power]" if store == SQLITE_POWER else store.backend


def _server_note(store: Store) -> str:
    if not store.server:
        return ""
    return ("Each repetition runs on a fresh database (CREATE DATABASE, untimed; dropped afterwards) on the "
            f"{store.backend} server at {servers.public_url(store.admin_url or '')}, in its default configuration: "
            "a save() is one transaction, kept as durably as the server's commit keeps it. ")


def _store_probe(store: Store) -> Any:
    return partial(servers.describe, store.backend, store.admin_url) if store.server else None


_OPERATIONS: dict[str, tuple[str, str, Callable[..., float], str]] = {
    # key: (op, label, workload, what is timed)
    "save": ("save", "save()", workloads.buffer_save, "save() of each message, one transaction each."),
    "save_many": ("save_many", "save_many()", workloads.buffer_save_many,
                  "save_many() in batches of 1,000 messages, one transaction each."),
    "pop": ("pop", "pop()", workloads.buffer_pop,
            "pop() of each message from a buffer filled (untimed, save_many) with exactly the messages popped."),
    "get": ("get", "get()", workloads.buffer_get,
            "get() called once per message held: each call reads the oldest pending message, which stays. The "
            "buffer is filled untimed with save_many."),
    "get_all": ("get_all", "get_all(500, after=...)", workloads.buffer_get_all,
                f"Every message read as the relay reads its windows: get_all({workloads.WINDOW}, after=<the last id "
                "of the previous window>) until it returns []. The buffer is filled untimed with save_many."),
    "delete": ("delete", "delete(id)", workloads.buffer_delete,
               "delete(id) of each message, oldest first, one transaction each (the buffer filled untimed)."),
    "delete_many": ("delete", "delete_many()", workloads.buffer_delete_many,
                    f"delete_many() of {workloads.WINDOW} ids at a time, oldest first (the relay's way after a "
                    "window's PubAcks), one transaction each."),
}


def _operation_cases(settings: Settings) -> list[Case]:
    """get/get_all/delete(_many) on memory and sqlite, the write operations at durability "power", and every
    operation on the database servers. Counts are (full, quick)."""
    count = settings.count
    counts: dict[str, dict[str, tuple[int, int]]] = {
        "memory": {"get": (200_000, 50_000), "get_all": (100_000, 20_000), "delete": (100_000, 40_000),
                   "delete_many": (200_000, 50_000)},
        "sqlite": {"get": (20_000, 5_000), "get_all": (200_000, 20_000), "delete": (10_000, 2_000),
                   "delete_many": (50_000, 20_000)},
        "sqlite[power]": {"pop": (3_000, 1_000), "delete": (3_000, 1_000), "delete_many": (20_000, 5_000)},
        "server": {"save": (2_000, 500), "save_many": (20_000, 5_000), "pop": (2_000, 500), "get": (5_000, 1_000),
                   "get_all": (50_000, 10_000), "delete": (2_000, 500), "delete_many": (20_000, 5_000)},
    }
    headline = {("sqlite", "get"), ("sqlite", "get_all"), ("sqlite", "delete")}
    cases: list[Case] = []
    for store in (MEMORY, SQLITE, SQLITE_POWER, *_server_stores(settings)):
        prefix = _prefix(store)
        if store == SQLITE_POWER:
            cases += _power_comparisons(settings)
        for key, (full, quick) in counts["server" if store.server else prefix].items():
            op, label, workload, what = _OPERATIONS[key]
            case = Case(
                name=f"{prefix}.{key}", op=op, backend=store.backend,
                subject_label=f"pbuffer {store.label} {label}", subject=partial(workload, store=store),
                count=count(full, quick), note=_server_note(store) + what + " No target; for context.",
                skip_if=store.unavailable if store.server else None, probe=_store_probe(store),
                headline=(prefix, key) in headline,
            )
            cases.append(server_core_case(case, store, key) if store.server else case)
    return cases


def _power_comparisons(settings: Settings) -> list[Case]:
    """save_many() at durability "power" (synchronous=FULL, an fsync per commit), beside the plain sqlite3 floor at
    FULL too (save() at "power" is 'sqlite[power].save vs sqlite3 rev-0002 row [FULL]', in core_cases.py)."""
    count = settings.count
    cases: list[Case] = []
    for key, workload, baseline, label, (full, quick) in (
            ("save_many", workloads.buffer_save_many, workloads.sqlite3_executemany, "sqlite3 executemany [FULL]",
             (20_000, 5_000)),):
        cases.append(Case(
            name=f"sqlite[power].{key} vs sqlite3[FULL]", op=key, backend="sqlite",
            subject_label=f"pbuffer sqlite {key}() [power]", subject=partial(workload, store=SQLITE_POWER),
            baseline_label=label, baseline=partial(baseline, synchronous="FULL"), count=count(full, quick),
            note=f"As 'sqlite.{key}' with durability='power' "
                 "(synchronous=FULL: an fsync per commit) on both sides, so this measures the disk's flush as much "
                 "as either. No target; for context.",
        ))
    return cases


# ------------------------------------------------------------------------------------------ producer processes


def _process_cases(settings: Settings) -> list[Case]:
    """4 and 8 producer processes saving into one store, each beside 1 process (the baseline) in the same
    repetitions: the ratio is the scaling."""
    count = settings.count
    cases: list[Case] = []
    for store, (full, quick) in ((SQLITE, (20_000, 4_000)), (SQLITE_POWER, (4_000, 1_000)),
                                 *((server, (4_000, 1_000)) for server in _server_stores(settings))):
        for producers in (4, 8):
            what = (f"one sqlite file (durability={store.durability!r})" if store.backend == "sqlite"
                    else f"one {store.backend} database")
            cases.append(Case(
                name=f"{_prefix(store)}.save {producers} processes vs 1", op="processes", backend=store.backend,
                subject_label=f"{producers} processes save()", baseline_label="1 process save()",
                subject=partial(processes.save_processes, processes=producers, store=store),
                baseline=partial(processes.save_processes, processes=1, store=store),
                count=count(full, quick),
                note=_server_note(store) + f"Total msg/s of {producers} producer processes (baseline: 1) saving "
                     f"into {what}, an even share of the messages each, one save() (one transaction) per message. "
                     "The producers are started once per case (untimed) and reused; each repetition they open "
                     "their own buffer on a fresh store (untimed), then the parent times from 'go' until the last "
                     "one reports done, and checks the store holds every message. No target; for context.",
                skip_if=store.unavailable if store.server else None,
                probe=_store_probe(store) if store.server else processes.describe_sqlite,
                headline=store == SQLITE and producers == 8,
            ))
    return cases


# ------------------------------------------------------------------------------------------------ group commit


def _group_commit_cases(settings: Settings) -> list[Case]:
    """AsyncBuffer with 64 concurrent producers (group commit) against one save() per message, one after another."""
    count = settings.count
    tasks = 64
    cases: list[Case] = []
    for store, (full, quick), (base_full, base_quick) in (
            (SQLITE_POWER, (20_000, 5_000), (3_000, 500)),
            (SQLITE, (40_000, 10_000), (10_000, 4_000)),
            *((server, (10_000, 2_000), (2_000, 500)) for server in _server_stores(settings))):
        durability = f" (durability='{store.durability}')" if store.backend == "sqlite" else ""
        cases.append(Case(
            name=f"{_prefix(store)}.aio.save {tasks} tasks vs save()", op="group_commit", backend=store.backend,
            subject_label=f"AsyncBuffer.save() x{tasks} tasks [group commit]",
            subject=partial(workloads.aio_save, store=store, tasks=tasks),
            baseline_label="save() one at a time", baseline=partial(workloads.buffer_save, store=store),
            count=count(full, quick), baseline_count=count(base_full, base_quick),
            target=(Target(f"{tasks} async producers with group commit >= 6x a commit per message (power)",
                           "min_ratio", 6.0) if store == SQLITE_POWER else None),
            note=_server_note(store) + f"Subject: pbuffer.AsyncBuffer(buffer) on {store.label}{durability} with "
                 f"group commit (the default), {tasks} asyncio tasks each awaiting save() after save(), the messages "
                 "shared evenly; saves made while a commit runs go into the next one, and each returns only once "
                 "its own commit is done. Baseline: the synchronous Buffer.save() loop on the same store, one "
                 "transaction per message. Rates are per message, so the counts may differ." +
                 (" The concurrency issue's target (>= 6x) is judged on durability='power', where each commit "
                  "is an fsync." if store == SQLITE_POWER else " No target; for context."),
            skip_if=store.unavailable if store.server else None, probe=_store_probe(store),
            headline=store == SQLITE_POWER,
        ))
    threads = 16
    cases.append(Case(
        name=f"sqlite[power].save {threads} threads vs save()", op="group_commit", backend="sqlite",
        subject_label=f"Buffer.save() from {threads} threads [group commit]",
        subject=partial(workloads.thread_save, store=SQLITE_POWER, threads=threads),
        baseline_label="save() one at a time", baseline=partial(workloads.buffer_save, store=SQLITE_POWER),
        count=count(20_000, 4_000), baseline_count=count(3_000, 500),
        note=f"Subject: {threads} threads calling the synchronous Buffer.save() on one sqlite buffer "
             "(durability='power', an fsync per commit); calls that arrive while a commit runs are written by the "
             "next one. Baseline: one thread's save() loop on the same kind of store. No target; for context.",
    ))
    return cases


# ----------------------------------------------------------------------------------------------------- backlog


def _backlog_cases(settings: Settings) -> list[Case]:
    """save() and pop() on sqlite buffers already holding 1,000 to 1,000,000 messages: the cost as the buffer
    grows (drawn in backlog.png)."""
    count = settings.count
    # Quick mode caps the backlog at QUICK_BACKLOG, so two sizes may come out the same: measured once.
    backlogs = sorted({count(size, min(size, QUICK_BACKLOG)) for size in (1_000, 10_000, 100_000, BIG_BACKLOG)})
    cases: list[Case] = []
    for op, workload, series in (("save", workloads.buffer_save_backlog, "sqlite save() behind a backlog"),
                                 ("pop", workloads.buffer_pop_backlog, "sqlite pop() from a backlog")):
        for backlog in backlogs:
            cases.append(Case(
                name=f"sqlite.{op} with {count_label(backlog)} waiting", op="backlog", backend="sqlite",
                subject_label=f"{op}() with {backlog:,} waiting", subject=partial(workload, backlog=backlog),
                count=count(5_000, 2_000), backlog=backlog, series=series,
                note=f"{op}() one message at a time (a transaction each, durability='process') on a fresh copy of a "
                     f"sqlite buffer written once per run with {backlog:,} messages"
                     + (" (pops beyond the backlog run in rounds, refilled untimed)" if op == "pop" else "")
                     + ". No baseline and no target: one point of the cost curve in backlog.png.",
            ))
    return cases


# ------------------------------------------------------------------------------------------------------- stats


def _stats_cases(settings: Settings) -> list[Case]:
    """Buffer.stats() on buffers of growing size: milliseconds per call. Skipped where stats() does not exist."""
    count = settings.count
    calls = 3 if settings.quick else 5
    # (store, full size, quick size); the sqlite sizes reuse the backlog files of 'sqlite.pop backlog'. A case is
    # named by the count it really measures (quick mode's 'sqlite.stats 50k' is the full run's 1M case).
    sizes: list[tuple[Store, int, int]] = [
        (SQLITE, 1_000, 1_000), (SQLITE, 100_000, 20_000), (SQLITE, BIG_BACKLOG, QUICK_BACKLOG),
        (MEMORY, 1_000_000, 100_000),
        *((server, 100_000, 10_000) for server in _server_stores(settings)),
    ]
    cases: list[Case] = []
    for store, full, quick in sizes:
        n = count(full, quick)
        biggest = store == SQLITE and full == BIG_BACKLOG
        where = ("a fresh copy (each repetition) of a sqlite file (durability='process') written once per run "
                 "with save_many" if store == SQLITE else
                 "one store filled once per case with save_many and shared by its repetitions (stats() only reads)")
        skip = store.unavailable
        cases.append(Case(
            name=f"{_prefix(store)}.stats {count_label(n)}", op="stats", backend=store.backend,
            subject_label=f"stats() with {n:,} pending", subject=partial(workloads.buffer_stats, store=store,
                                                                          calls=calls),
            count=n, unit="ms", warmup=False,
            note=(_server_note(store) if store.server else "") + f"Milliseconds per Buffer.stats() call on a "
                 f"buffer holding {n:,} pending messages (no dead letters): {where}. Each repetition opens it, "
                 f"calls stats() once untimed (checked: pending == {n:,} and every field is there), then times "
                 f"{calls} calls and reports the mean. No warm-up run (the untimed call is the warm-up). Lower is "
                 "better." + (" The concurrency issue's target: under 10 ms on 1,000,000 messages, judged on the "
                              "worst repetition." if biggest else " No target; for context.")
                 + (f" Quick mode: {n:,} messages, not full mode's {full:,}." if settings.quick and full != quick
                    else ""),
            target=(Target(f"stats() < 10 ms on a {n:,}-message sqlite buffer"
                           + ("" if n == BIG_BACKLOG else f" (the issue's: {BIG_BACKLOG:,})"), "below", 10.0)
                    if biggest else None),
            skip_if=skip, probe=_store_probe(store), headline=biggest,
        ))
    return cases
