"""What the command line prints, the same whether a person or a pipe reads it.

rich hard-wraps text at 80 columns (or ``$COLUMNS``) when stdout is not a terminal: one logical line comes out as two
under ``| grep``, and where it breaks moves with the length of a path. Here a line is never wrapped, and a table is
drawn only on a terminal; to a pipe it is one tab-separated line per row that ``grep`` and ``cut`` can read. Text that
comes from a buffer, a URL or a user goes in as :class:`rich.text.Text` or through :func:`escape`, never as markup.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

__all__ = ["escape", "make_console", "print_table"]


def make_console(*, stderr: bool = False) -> Console:
    """A console that never wraps a line and never colours text by guessing (numbers, paths) from its content."""
    return Console(stderr=stderr, soft_wrap=True, highlight=False)


def print_table(console: Console, rows: Sequence[Sequence[str]], *, headers: Sequence[str] = (),
                title: str | None = None) -> None:
    """``rows`` as a table on a terminal, and as tab-separated lines (headers first) anywhere else.

    Every cell is plain text: markup in it is shown as written.
    """
    if console.is_terminal:
        table = Table(*headers, title=title, show_header=bool(headers))
        for row in rows:
            table.add_row(*(Text(cell) for cell in row))
        console.print(table)
        return
    # Written past rich on purpose: rich would expand the tabs into spaces.
    lines = [f"{title}:"] if title else []
    for row in [list(headers)] * bool(headers) + [list(row) for row in rows]:
        # A tab or newline inside a cell would make one row look like two cells or two rows.
        lines.append("\t".join(cell.replace("\t", " ").replace("\n", " ").replace("\r", " ") for cell in row))
    console.file.write("".join(f"{line}\n" for line in lines))
    console.file.flush()
