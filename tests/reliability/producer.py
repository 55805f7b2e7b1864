"""A producer that is killed (-9) by tests/reliability/test_crashes.py at random moments.

    python producer.py URL FIRST_NUMBER

Saves messages numbered from FIRST_NUMBER, and after each save() returns prints "<number> <id>" and flushes: a
line on stdout means the caller was told the message is saved. It runs until it is killed.
"""

from __future__ import annotations

import sys

import pbuffer

url, number = sys.argv[1], int(sys.argv[2])
with pbuffer.open(url) as buf:
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        message = buf.save(f"message {number}".encode(), subject="crash.test", headers={"N": str(number)})
        sys.stdout.write(f"{number} {message.id}\n")
        sys.stdout.flush()
        number += 1
