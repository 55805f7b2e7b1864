"""Run by tests as a separate process: open a buffer (optionally with another migrations directory) and report.

    python open_buffer_process.py URL SCRIPT_LOCATION|- START_AT_EPOCH OPTIONS_JSON
"""

from __future__ import annotations

import json
import sys
import time

from migration_support import use_scripts

import pbuffer

url, scripts, start_at, options = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
if scripts != "-":
    use_scripts(scripts)
# Every process starts at the same moment, so they really race for the schema lock.
time.sleep(max(0.0, start_at - time.time()))
with pbuffer.open(url, **options) as buf:
    print(json.dumps({"pending": len(buf), "dead": len(buf.dead_letters())}))
