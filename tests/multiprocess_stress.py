"""Run by tests/test_processes.py: PROCS producer processes x 2 threads save PER messages each into one buffer
while another process pops; prints a JSON summary and whether each producer's order was kept.

    python multiprocess_stress.py URL PROCS PER
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import threading
import time

import pbuffer

URL = sys.argv[1]
PROCS = int(sys.argv[2])
THREADS = 2
PER = int(sys.argv[3])


def producer(p: int) -> list[str]:
    buf = pbuffer.open(URL)
    errors: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(PER):
                buf.save(f"{p}:{t}:{i}".encode(), subject=f"p{p}.t{t}")
        except Exception as exc:  # reported, not raised: the parent counts every error
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buf.close()
    return errors


def popper(stop: mp.synchronize.Event, out: mp.Queue[tuple[list[str], list[str]]]) -> None:
    buf = pbuffer.open(URL)
    got: list[str] = []
    errors: list[str] = []
    try:
        while True:
            message = buf.pop()
            if message is None:
                if not stop.is_set():
                    time.sleep(0.001)
                    continue
                message = buf.pop()  # the producers are done: one last look
                if message is None:
                    break
            got.append(message.payload.decode())
    except Exception as exc:
        errors.append(repr(exc))
    out.put((got, errors))


if __name__ == "__main__":
    pbuffer.open(URL).close()
    stop = mp.Event()
    out: mp.Queue[tuple[list[str], list[str]]] = mp.Queue()
    popping = mp.Process(target=popper, args=(stop, out))
    popping.start()
    started = time.time()
    with mp.Pool(PROCS) as pool:
        producer_errors = pool.map(producer, range(PROCS))
    stop.set()
    got, popper_errors = out.get()
    popping.join()
    with pbuffer.open(URL) as buf:
        rest = [m.payload.decode() for m in buf.get_all()]
    last: dict[tuple[str, str], int] = {}
    ordered = True
    for text in got:  # each producer thread's messages must come out in the order it saved them
        p, t, i = text.split(":")
        ordered = ordered and last.get((p, t), -1) < int(i)
        last[(p, t)] = int(i)
    errors = [e for chunk in producer_errors for e in chunk] + popper_errors
    print(json.dumps({"seconds": round(time.time() - started, 1), "popped": len(got), "left": len(rest),
                      "unique": len(set(got + rest)), "total": len(got + rest), "expected": PROCS * THREADS * PER,
                      "errors": len(errors), "first_errors": errors[:3], "ordered": ordered}))
