"""The quick start as a program: save, read, delete, dead-letter and pop messages on the default sqlite buffer.

It works on its own subject (``pbuffer.quickstart``), so it never touches other messages in that buffer.
Run it with ``make demo`` or ``python -m pbuffer``.
"""

from __future__ import annotations

import time

import pbuffer

SUBJECT = "pbuffer.quickstart"


def main() -> int:
    url = pbuffer.default_url()
    print(f"buffer: {url}")
    with pbuffer.open(url, subject=SUBJECT) as buf:
        started = time.perf_counter()
        first = buf.save(b"order #1 created", headers={"Content-Type": "text/plain"})
        rest = buf.save_many([f"order #{n} created".encode() for n in range(2, 6)])
        print(f"saved {1 + len(rest)} messages on {SUBJECT!r}; the oldest is {first.id}")
        oldest = buf.get()
        print(f"pending: {len(buf)}; oldest, still pending: {oldest!r}")
        # What a relay does: read the oldest, publish it, and delete it by id once JetStream acknowledged it.
        if oldest is not None:
            print(f"published and deleted {oldest.id}: delete() returned {buf.delete(oldest.id)}")
        buf.mark_dead(rest[0].id, "example: the server rejected it", attempts=3)
        dead = buf.dead_letters()[0]
        print(f"dead-lettered {dead.message.id}: {dead.reason} after {dead.attempts} attempts")
        # pop() is read-and-delete in one step: a popped message is gone, there is nothing left to delete.
        popped = []
        while (message := buf.pop()) is not None:
            popped.append(message.payload.decode())
        print(f"popped oldest first: {popped}")
        buf.requeue(dead.message.id)
        print(f"requeued the dead letter at the back; pending: {[m.payload.decode() for m in buf.get_all()]}")
        print(f"deleted the requeued message: delete() returned {buf.delete(dead.message.id)}")
        print(f"done in {(time.perf_counter() - started) * 1000:.1f} ms; pending now: {len(buf)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
