"""``python -m pbuffer.cli``: the ``pbuffer`` command."""

from __future__ import annotations

from . import main

main()
