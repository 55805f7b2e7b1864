"""`python -m pbuffer`: the quick start, run on the default buffer (see pbuffer.quickstart)."""

from __future__ import annotations

from .quickstart import main

raise SystemExit(main())
