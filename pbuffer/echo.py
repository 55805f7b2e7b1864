"""``python -m pbuffer.echo`` and ``pbuffer.echo``, as the README shows them; the module is
:mod:`pbuffer.examples.echo`."""

from __future__ import annotations

import sys

from .examples.echo import *  # noqa: F403 - the same public names, not a copy
from .examples.echo import main

if __name__ == "__main__":
    sys.exit(main())
