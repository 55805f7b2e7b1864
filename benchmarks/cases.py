"""The table of cases. A new backend or peer is a new row here; the harness and the report need no change.

Message counts are full-mode / quick-mode sizes before ``--scale``; they keep a full run under about three
minutes on a 2-core machine. Targets are the issue's, unchanged: a missed one is reported as missed.
"""

from __future__ import annotations

from functools import partial

from . import e2e, peers, workloads
from .harness import Case, Settings, Target

__all__ = ["BACKENDS", "OPS", "build_cases"]

OPS = ("save", "save_many", "pop", "pop_backlog", "drain")
BACKENDS = ("memory", "sqlite", "nats")

#: The payload-size cases (the 100-byte ones are the cases tagged with the same series).
PAYLOAD_1KIB = b"x" * 1024
PAYLOAD_64KIB = b"x" * (64 * 1024)
SAVE_SERIES = "sqlite save()"
POP_SERIES = "sqlite pop()"

_PQ_DEFAULTS = (
    "persist-queue 1.1 sets only PRAGMA journal_mode=WAL on its connections (sqlbase.SQLiteBase._new_db_connection) "
    "and leaves synchronous at sqlite's default, FULL: stronger than pbuffer's durability='process' (NORMAL). "
)
_PQ_SETUP = "SQLiteAckQueue(auto_commit=True, multithreading=True); items are pickled."
_LQ_DEFAULTS = (
    "litequeue sets journal_mode=WAL, synchronous=NORMAL (the same durability as 'process'), temp_store=MEMORY "
    "and a 256 MB cache_size; it stores text, so the payload is put as a 100-character str. "
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
    count = settings.count
    e2e_n = count(50_000, 20_000)
    seed_n = count(5_000, 2_000)
    memory_n = count(1_000_000, 200_000)
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
        memory_note += " Quick mode: the backlog is 200,000, not the issue's 1,000,000."
    if settings.scale != 1:
        memory_note += f" Scaled by {settings.scale:g}."
    big_backlog = count(1_000_000, 200_000)
    small_backlog = count(1_000)
    backlog_note = (
        f"pop() timed from the front of a buffer holding {big_backlog:,} messages (subject) and {small_backlog:,} "
        f"(baseline; its pops run in rounds of {small_backlog:,}, refilled untimed in between). Each repetition "
        "opens a fresh copy of a backlog file written once per run with save_many."
    )
    if settings.quick:
        backlog_note += " Quick mode: the big backlog is 200,000, not the issue's 1,000,000."
    if settings.scale != 1:
        backlog_note += f" Scaled by {settings.scale:g}."

    return [
        Case(
            name="sqlite.save vs sqlite3", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label="sqlite3 loop", baseline=workloads.sqlite3_loop,
            count=count(20_000, 8_000),
            target=Target("sqlite save() >= 0.6x plain sqlite3 loop", "min_ratio", 0.6),
            note="Baseline: python sqlite3, WAL, synchronous=NORMAL, one BEGIN IMMEDIATE; INSERT; COMMIT per "
                 "message into (id INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL).",
            series=SAVE_SERIES,
        ),
        Case(
            name="sqlite.save vs persist-queue", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label="persist-queue put() [NORMAL]",
            baseline=partial(peers.persistqueue_put, synchronous="NORMAL"),
            count=count(10_000, 4_000),
            target=Target("sqlite save() >= 3x persist-queue put()", "min_ratio", 3.0),
            note=_PQ_DEFAULTS + "For equal durability this case sets synchronous=NORMAL on its connections after "
                 "opening; 'sqlite.save[power] vs persist-queue[default]' compares at its default. " + _PQ_SETUP,
            requires=("persistqueue",), probe=partial(peers.persistqueue_pragmas, synchronous="NORMAL"),
        ),
        Case(
            name="sqlite.save[power] vs persist-queue[default]", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [power]", subject=partial(workloads.buffer_save, durability="power"),
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
        ),
        Case(
            name="sqlite.pop vs persist-queue", op="pop", backend="sqlite",
            subject_label="pbuffer sqlite pop() [process]", subject=workloads.buffer_pop,
            baseline_label="persist-queue get()+ack() [NORMAL]",
            baseline=partial(peers.persistqueue_pop, synchronous="NORMAL"),
            count=count(5_000, 2_000),
            target=Target("sqlite pop() >= 5x persist-queue get()+ack()", "min_ratio", 5.0),
            note=_PQ_DEFAULTS + "For equal durability this case sets synchronous=NORMAL on its connections. Both "
                 "start with exactly the messages to be popped (pbuffer filled with save_many, persist-queue with "
                 "put()). persist-queue keeps acked rows (status=5) until clear_acked_data() and its get() scans "
                 "past them in id order, so its rate falls as a repetition proceeds: the ratio depends on the "
                 "count popped. " + _PQ_SETUP,
            requires=("persistqueue",), probe=partial(peers.persistqueue_pragmas, synchronous="NORMAL"),
            series=POP_SERIES,
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
            count=count(10_000, 5_000),
            target=Target(f"sqlite pop() with {big_backlog:,} waiting within 2x of {small_backlog:,} waiting",
                          "max_slowdown", 2.0),
            note=backlog_note + " The target's measure is the slowdown, rate(small)/rate(big).",
        ),
        Case(
            name="memory.save", op="save", backend="memory",
            subject_label="pbuffer memory save()", subject=partial(workloads.buffer_save, backend="memory"),
            count=count(100_000, 40_000),
            target=Target("memory save() >= 250,000 msg/s", "min_rate", 250_000),
        ),
        Case(
            name="memory.save_many", op="save_many", backend="memory",
            subject_label="pbuffer memory save_many()", subject=partial(workloads.buffer_save_many, backend="memory"),
            count=count(100_000, 40_000),
            note="Batches of 1,000 messages per call. No target; for context.",
        ),
        Case(
            name="memory.pop", op="pop", backend="memory",
            subject_label="pbuffer memory pop()", subject=partial(workloads.buffer_pop, backend="memory"),
            count=count(50_000, 20_000),
            note="No target; for context.",
        ),
        Case(
            name="drain.e2e vs seed", op="drain", backend="nats",
            subject_label=f"sqlite -> relay drain() [batch {e2e.BATCH_SIZE}]", subject=e2e.relay_drain,
            baseline_label="seed loop: await js.publish()", baseline=e2e.seed_publish_loop,
            count=e2e_n, baseline_count=seed_n,
            target=Target("end to end >= 5x the seed's loop", "min_ratio", 5.0),
            note=_E2E_SETUP + "Baseline: the seed's loop exactly as the seed wrote it, one awaited "
                 "js.publish(subject, payload) per message on nats.connect()/nc.jetstream() with their defaults: "
                 "no Nats-Msg-Id (so the server does no deduplication for it), no buffer, nothing deleted. The "
                 f"relay drains {e2e_n:,} messages per repetition and the seed loop publishes {seed_n:,} (it is "
                 "slow); rates are per message, so the counts may differ. The subject is measured again in "
                 "'drain.e2e vs ceiling', each time paired with that case's baseline." + _e2e_counts(settings),
            skip_if=e2e.nats_missing,
        ),
        Case(
            name="drain.e2e vs ceiling", op="drain", backend="nats",
            subject_label=f"sqlite -> relay drain() [batch {e2e.BATCH_SIZE}]", subject=e2e.relay_drain,
            baseline_label="bare js.publish_async(), no buffer", baseline=e2e.ceiling_publish_async,
            count=e2e_n,
            target=Target("end to end >= 0.6x bare publish_async (the ceiling)", "min_ratio", 0.6),
            note=_E2E_SETUP + "Baseline (the ceiling): nats-py alone, no buffer: futures = [await "
                 "js.publish_async(subject, payload) for each message]; await asyncio.gather(*futures), with no "
                 "wait_stall, on a JetStreamContext made with "
                 f"publish_async_max_pending={e2e.CEILING_MAX_PENDING:,} so it never stalls (nats-py's default, "
                 "4,000, would make it wait for acks part way); no Nats-Msg-Id, default connection options. "
                 f"Both sides move {e2e_n:,} messages per repetition." + _e2e_counts(settings),
            skip_if=e2e.nats_missing,
        ),
        Case(
            name="drain.memory", op="drain", backend="nats",
            subject_label=f"RSS growth draining {memory_n:,}", subject=e2e.relay_drain_memory,
            count=memory_n, unit="MB", reps=memory_reps, warmup=False,
            target=Target(f"draining a {memory_n:,}-message backlog grows the process < 100 MB", "below", 100.0),
            note=memory_note,
            skip_if=e2e.nats_missing,
        ),
    ]
