"""The core-speed issue's cases: pbuffer beside pinned baselines (:mod:`.baselines`) that do not move with its
design, each with the issue's target; and the figures it asks for without a target (get_all's linearity, the
relay's claim+delete cost). Counts are full-mode / quick-mode sizes before ``--scale``.
"""

from __future__ import annotations

from functools import partial

from . import baselines, peers, workloads
from .harness import Case, Settings, Target, count_label
from .workloads import MEMORY, SQLITE, SQLITE_POWER, WINDOW, Store

__all__ = ["POP_SERIES", "REV2", "core_cases", "server_core_case"]

#: The series of the sqlite pop() cases at several payload sizes (cases.py tags the 1KiB and 64KiB ones).
POP_SERIES = "sqlite pop()"
#: How the pinned row is named in case names and labels.
REV2 = "rev-0002 row"
_REV2_NOTE = (
    "Baseline (pinned, frozen at schema revision 0002, it does not move with pbuffer's design): python sqlite3 "
    "on the table (seq INTEGER PRIMARY KEY, id BLOB UNIQUE, subject TEXT, payload BLOB, headers TEXT, created_us "
    "INTEGER, checksum INTEGER) with pbuffer's revision-0002 connection pragmas (auto_vacuum=INCREMENTAL, WAL, "
    "synchronous={sync}, busy_timeout, trusted_schema=OFF, foreign_keys=OFF, journal_size_limit)"
)
_PQ_NORMAL = ("persist-queue 1.1 leaves synchronous at sqlite's default FULL; for equal durability this case sets "
              "synchronous=NORMAL on its connections after opening. SQLiteAckQueue(auto_commit=True, "
              "multithreading=True); items are pickled.")


def core_cases(settings: Settings) -> list[Case]:
    """The sqlite and memory cases of the core-speed issue (the server ones: :func:`server_core_case`)."""
    count = settings.count
    threads = 8
    thread_n = count(20_000, 4_000)
    big, small = count(100_000), count(10_000)
    claim_n = count(50_000, 20_000)
    return [
        Case(
            name=f"sqlite.save vs sqlite3 {REV2}", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [process]", subject=workloads.buffer_save,
            baseline_label=f"sqlite3 loop, {REV2} [NORMAL]", baseline=baselines.sqlite3_rev2_insert,
            count=count(20_000, 5_000),
            target=Target(f"sqlite save() >= 0.8x a plain sqlite3 loop inserting the {REV2}", "min_ratio", 0.8),
            note=_REV2_NOTE.format(sync="NORMAL") + ": BEGIN IMMEDIATE; one INSERT of a row with a uuid4() id, "
                 "time.time_ns() // 1000 and zlib.crc32 of the payload, made per message; COMMIT. Equal "
                 "durability: pbuffer's durability='process' is the same WAL + synchronous=NORMAL.",
            headline=True,
        ),
        Case(
            name=f"sqlite[power].save vs sqlite3 {REV2} [FULL]", op="save", backend="sqlite",
            subject_label="pbuffer sqlite save() [power]", subject=partial(workloads.buffer_save, store=SQLITE_POWER),
            baseline_label=f"sqlite3 loop, {REV2} [FULL]",
            baseline=partial(baselines.sqlite3_rev2_insert, synchronous="FULL"),
            count=count(3_000, 1_000),
            target=Target(f"sqlite save() [power] >= 0.9x the sqlite3 loop inserting the {REV2} at FULL",
                          "min_ratio", 0.9),
            note=_REV2_NOTE.format(sync="FULL") + ", the same loop as 'sqlite.save vs sqlite3 rev-0002 row'. Both "
                 "sides pay an fsync per commit (pbuffer durability='power'), so the disk's flush weighs on both.",
            headline=True,
        ),
        Case(
            name=f"sqlite.save_many vs sqlite3 {REV2} executemany", op="save_many", backend="sqlite",
            subject_label="pbuffer sqlite save_many() [process]", subject=workloads.buffer_save_many,
            baseline_label=f"sqlite3 executemany, {REV2} [NORMAL]", baseline=baselines.sqlite3_rev2_executemany,
            count=count(50_000, 20_000),
            target=Target(f"sqlite save_many() >= 0.8x executemany of the {REV2} in batches of 1,000", "min_ratio",
                          0.8),
            note=_REV2_NOTE.format(sync="NORMAL") + ": per batch of 1,000, the rows made (a uuid4() id each, "
                 "time.time_ns() // 1000 once, zlib.crc32 of the payload each), then BEGIN IMMEDIATE; executemany "
                 "of the INSERT; COMMIT. Subject: save_many() of 1,000 messages a call (one transaction each).",
            headline=True,
        ),
        Case(
            name=f"sqlite.save {threads} threads vs 1 thread", op="save", backend="sqlite",
            subject_label=f"save() from {threads} threads [process]",
            subject=partial(workloads.thread_save, store=SQLITE, threads=threads),
            baseline_label="save() from 1 thread", baseline=workloads.buffer_save,
            count=thread_n,
            target=Target(f"{threads} threads calling save() >= 1.0x one thread doing all the saves", "min_ratio", 1.0),
            note=f"Subject: {threads} threads calling the synchronous Buffer.save() on one sqlite buffer "
                 f"(durability='process'), an even share of the {thread_n:,} messages each, started together; "
                 "calls that arrive while a commit runs are written by the next one (group commit). Baseline: "
                 "one thread's save() loop doing all of them on the same kind of store.",
            headline=True,
        ),
        Case(
            name=f"sqlite.save {threads} threads vs persist-queue {threads} threads", op="save", backend="sqlite",
            subject_label=f"save() from {threads} threads [process]",
            subject=partial(workloads.thread_save, store=SQLITE, threads=threads),
            baseline_label=f"persist-queue put() from {threads} threads [NORMAL]",
            baseline=partial(peers.persistqueue_thread_put, threads=threads, synchronous="NORMAL"),
            count=thread_n,
            target=Target(f"save() from {threads} threads >= 1.2x persist-queue put() from {threads} threads, "
                          "equal durability", "min_ratio", 1.2),
            note=f"Both sides: {threads} threads, an even share of the {thread_n:,} messages each, started "
                 "together, equal durability (WAL + synchronous=NORMAL). " + _PQ_NORMAL,
            requires=("persistqueue",), probe=partial(peers.persistqueue_pragmas, synchronous="NORMAL"),
            headline=True,
        ),
        Case(
            name=f"sqlite.pop vs sqlite3 {REV2} DELETE RETURNING", op="pop", backend="sqlite",
            subject_label="pbuffer sqlite pop() [process]", subject=workloads.buffer_pop,
            baseline_label=f"sqlite3 DELETE ... RETURNING, {REV2} [NORMAL]", baseline=baselines.sqlite3_rev2_pop,
            count=count(5_000, 2_000),
            target=Target(f"sqlite pop() >= 0.8x a plain sqlite3 loop deleting the oldest {REV2} with DELETE ... "
                          "RETURNING", "min_ratio", 0.8),
            note=_REV2_NOTE.format(sync="NORMAL") + ": BEGIN IMMEDIATE; DELETE FROM messages WHERE seq = (SELECT "
                 "seq FROM messages ORDER BY seq LIMIT 1) RETURNING id, subject, payload, headers, created_us, "
                 "checksum; fetchone; COMMIT, per message. Both sides start with exactly the messages to be popped "
                 "(inserted untimed).",
            # The 100-byte point of the pop-vs-payload-size line (payload.png): it pops exactly what it holds,
            # as the 1KiB and 64KiB cases do.
            series=POP_SERIES, headline=True,
        ),
        Case(
            name="memory.save vs deque loop", op="save", backend="memory",
            subject_label="pbuffer memory save()", subject=partial(workloads.buffer_save, store=MEMORY),
            baseline_label="deque loop: uuid4(), crc32, tuple", baseline=baselines.deque_loop,
            count=count(100_000, 40_000),
            target=Target("memory save() >= 0.85x a deque loop (uuid4, crc32, tuple)", "min_ratio", 0.85),
            note="Baseline (pinned): per message one uuid.uuid4(), one zlib.crc32 of the payload and a tuple "
                 "(id, subject, payload, crc) appended to a collections.deque; no validation, no lock, no index. "
                 "The absolute target (>= 300,000 msg/s) is judged on 'memory.save', which measures the same.",
            headline=True,
        ),
        Case(
            name=f"memory.get_all {count_label(big)} vs {count_label(small)} waiting, windows of {WINDOW}",
            op="get_all", backend="memory",
            subject_label=f"get_all({WINDOW}, after=...) over {big:,}",
            subject=partial(workloads.buffer_get_all, store=MEMORY),
            baseline_label=f"get_all({WINDOW}, after=...) over {small:,}",
            baseline=partial(workloads.buffer_get_all, store=MEMORY),
            count=big, baseline_count=small,
            note=f"Every message read without deleting, as the relay reads its windows: get_all({WINDOW}, "
                 "after=<the last id of the previous window>) until it returns [], from a memory buffer holding "
                 f"{big:,} (subject) or {small:,} (baseline) messages, filled untimed. The ratio is msg/s at "
                 f"{big:,} over msg/s at {small:,}: about 1.0x when reading is linear in the messages read, "
                 f"about {small / big:.2g}x when each window costs as much as everything before it (quadratic). "
                 "No target; the issue asks whether it is linear.",
            headline=True,
        ),
        Case(
            name=f"sqlite.claim+delete_many windows of {WINDOW}", op="claim", backend="sqlite",
            subject_label=f"claim({WINDOW}) + delete_many() per window",
            subject=workloads.buffer_claim_delete, count=claim_n, unit="us/msg",
            note=f"Microseconds per message (lower is better) to drain {claim_n:,} messages the relay's way "
                 f"without publishing: claim({WINDOW}, owner, lease), claim the next window behind it (the "
                 "relay's read-ahead), delete_many() the first window's ids, and so on until a claim returns []. "
                 "A sqlite buffer (durability='process') filled untimed with save_many. No baseline and no "
                 "target: the relay's storage cost per message.",
            headline=True,
        ),
    ]


#: key -> (baseline workload, what the baseline runs) for the server cases with a plain-driver baseline.
_SERVER_BASELINES = {
    "save": (baselines.server_save, "the row INSERT and the counters upsert (INSERT ... ON CONFLICT / ON DUPLICATE "
             "KEY UPDATE on a random one of 16 shards), one commit per message"),
    "save_many": (baselines.server_save_many, "executemany of the 1,000 rows' INSERT and one counters upsert, one "
                  "commit per batch of 1,000"),
    "pop": (baselines.server_pop, "the pop of the oldest free row (PostgreSQL: DELETE ... WHERE seq = (SELECT ... "
            "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING ...; MariaDB: SELECT ... FOR UPDATE SKIP LOCKED "
            "then DELETE by seq) and the counters upsert, one commit per message"),
}
_DRIVER = {"postgresql": "psycopg", "mariadb": "pymysql"}


def server_core_case(case: Case, store: Store, key: str) -> Case:
    """``case`` (``<server>.save``, ``.save_many`` or ``.pop``) beside the plain-driver loop running the same
    statements, with the core-speed target (>= 0.7x); other cases unchanged."""
    if key not in _SERVER_BASELINES:
        return case
    workload, what = _SERVER_BASELINES[key]
    driver = _DRIVER[store.backend]
    label = "save_many()" if key == "save_many" else f"{key}()"
    return Case(
        name=f"{case.name} vs {driver} loop", op=case.op, backend=case.backend, subject_label=case.subject_label,
        subject=case.subject, count=case.count,
        baseline_label=f"plain {driver} loop, same statements", baseline=partial(workload, store=store),
        target=Target(f"{store.backend} {label} >= 0.7x a plain {driver} loop running the same statements",
                      "min_ratio", 0.7),
        note=case.note.replace(" No target; for context.", "") + f" Baseline: {driver} alone (no SQLAlchemy, no "
             f"pbuffer) on tables of pbuffer's revision-0002 shape of its own (bench_messages, bench_counters) in a "
             f"fresh database of the same server, READ COMMITTED like pbuffer, running {what}; the rows' ids "
             "(uuid4), times and CRC32s are made inside the timed loop.",
        # Not in quick mode: a fresh database per side and repetition makes the six server cases about 70 s
        # here; `--quick --all --backend postgresql` (or full mode) runs them.
        skip_if=case.skip_if, probe=case.probe, headline=False,
    )
