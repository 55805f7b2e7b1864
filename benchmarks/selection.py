"""Which cases a run measures: ``--case`` by exact name, or ``--ops`` x ``--backend`` (quick mode: the headline
cases unless ``--all``). A selection that comes out empty is an error that says how to select, never a run of
nothing."""

from __future__ import annotations

import difflib
from collections import defaultdict

from .harness import Case, Settings

__all__ = ["SelectionError", "select"]


class SelectionError(ValueError):
    """Nothing (or an unknown case) selected; the message says what there is to choose from."""


def select(available: list[Case], settings: Settings, *, ops: list[str] | None = None,
           backends: list[str] | None = None, cases: list[str] | None = None, every: bool = False) -> list[Case]:
    """The cases of ``available`` to run, in table order. ``cases``: exact names (the filters then do not apply);
    ``ops``/``backends``: ``None`` means all; in quick mode only headline cases unless ``every``."""
    if cases:
        return _by_name(available, cases, settings)
    mode = [case for case in available if case.headline or not settings.quick or every]
    chosen = [case for case in mode
              if (ops is None or case.op in ops) and (backends is None or case.backend in backends)]
    if not chosen:
        raise SelectionError(_nothing(available, mode, settings, ops, backends, every))
    return chosen


def _by_name(available: list[Case], names: list[str], settings: Settings) -> list[Case]:
    known = {case.name for case in available}
    unknown = [name for name in names if name not in known]
    if unknown:
        lines = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.5)
            lines.append(f"no case named {name!r}" + (
                f"; did you mean: {'; '.join(repr(match) for match in close)}" if close else ""))
        raise SelectionError(
            "\n".join(lines) + f"\nCase names come from the counts measured, so they depend on the mode and "
            f"--scale ({settings.mode} mode, scale {settings.scale:g} here); --list prints them.")
    wanted = set(names)
    return [case for case in available if case.name in wanted]


def _nothing(available: list[Case], mode: list[Case], settings: Settings, ops: list[str] | None,
             backends: list[str] | None, every: bool) -> str:
    asked = " ".join(part for part in (f"--ops {','.join(ops)}" if ops else "",
                                       f"--backend {','.join(backends)}" if backends else "") if part)
    which = "headline cases of quick mode" if settings.quick and not every else f"cases of {settings.mode} mode"
    by_backend: dict[str, set[str]] = defaultdict(set)
    for case in mode:
        by_backend[case.backend].add(case.op)
    have = "; ".join(f"--backend {backend}: --ops {','.join(sorted(found))}" for backend, found in
                     sorted(by_backend.items()))
    text = f"no case to run: none of the {which} matches {asked or 'the selection'}. Those that have cases: {have}."
    if settings.quick and not every:
        more = sum(1 for case in available
                   if (ops is None or case.op in ops) and (backends is None or case.backend in backends))
        if more:
            text += f" Add --all to run the {more} non-headline case(s) that match (at quick sizes)."
    return text + " Or choose one case with --case NAME."
