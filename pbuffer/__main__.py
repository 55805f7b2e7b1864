"""`python -m pbuffer`: the quick start, run on the default buffer (see pbuffer.cli.quickstart)."""

from __future__ import annotations

from .cli.quickstart import main

raise SystemExit(main())
