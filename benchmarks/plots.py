"""PNG plots of a run's JSON document (``--plot DIR``; ``--plot DIR --from-json FILE`` redraws a saved run).

matplotlib comes with ``pip install 'pbuffer[bench]'``; it is imported only here, lazily, with the non-interactive
Agg backend. Without it :func:`plot` prints why and writes nothing. Only cases that ran (status ``ok``) are drawn.
"""

from __future__ import annotations

import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from .report import filtered

__all__ = ["plot"]

RATE = "msg/s"
#: Above this max/min spread of the plotted rates, the throughput axis is logarithmic.
LOG_SPREAD = 20.0
#: Characters of a title's second line (what the run was filtered to) before it is shortened with "[...]".
TITLE_WIDTH = 110


def _measured(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [case for case in document.get("cases", [])
            if case.get("status") == "ok" and case.get("unit", RATE) == RATE]


def _size(payload_bytes: int) -> str:
    if payload_bytes >= 1024 and payload_bytes % 1024 == 0:
        return f"{payload_bytes // 1024} KiB"
    return f"{payload_bytes} B"


def _title(document: dict[str, Any], what: str) -> str:
    machine = document.get("machine", {})
    commit = (machine.get("git_commit") or "")[:10] or "unknown commit"
    title = f"pbuffer {what}: {document.get('mode', '?')} mode, scale {document.get('scale', 1):g}, {commit}"
    selection = filtered(document)
    # A filtered run's plot shows part of the cases: say which, so it is not read as the whole picture.
    return f"{title}\n{textwrap.shorten('filtered to ' + selection, TITLE_WIDTH)}" if selection else title


def plot(document: dict[str, Any], directory: Path) -> list[Path]:
    """Write the plots ``document`` has data for into ``directory`` (created if needed); return their paths."""
    try:
        import matplotlib
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install 'pbuffer[bench]')", file=sys.stderr)
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, draw in (("throughput.png", _throughput), ("payload.png", _payload), ("backlog.png", _backlog),
                       ("drain.png", _drain)):
        figure = draw(plt, document)
        if figure is None:
            continue
        path = directory / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def _throughput(plt: Any, document: dict[str, Any]) -> Any:
    """(a) Median msg/s per case, subject and baseline side by side, min-max as error bars."""
    cases = _measured(document)
    if not cases:
        return None
    # One row per bar: the case's name beside pbuffer's bar, "vs <that baseline>" beside its baseline's.
    rows: list[tuple[str, dict[str, Any], str]] = []
    for case in cases:
        rows.append((case["name"], case["subject"], "tab:blue"))
        if case["baseline"] is not None:
            rows.append((f"vs {case['baseline']['label']}", case["baseline"], "tab:gray"))
    figure, axes = plt.subplots(figsize=(11, 0.3 * len(rows) + 1.8))
    values: list[float] = []
    for row, (_, side, colour) in enumerate(rows):
        median = float(side["median"])
        values.append(median)
        error = [[median - float(side["min"])], [float(side["max"]) - median]]
        label = "pbuffer (subject)" if colour == "tab:blue" else "baseline (named on the left)"
        axes.barh(row, median, 0.8, xerr=error, color=colour, capsize=2,
                  label=label if label not in axes.get_legend_handles_labels()[1] else None)
    axes.set_yticks(range(len(rows)))
    axes.set_yticklabels([name for name, _, _ in rows], fontsize=7)
    for tick, (_, _, colour) in zip(axes.get_yticklabels(), rows, strict=True):
        tick.set_color("dimgray" if colour == "tab:gray" else "black")
    axes.invert_yaxis()
    if values and max(values) / max(min(values), 1e-9) > LOG_SPREAD:
        axes.set_xscale("log")
    axes.set_xlabel("msg/s (median; bars: min-max over repetitions)")
    axes.set_title(_title(document, "throughput by case"), fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure


def _backlog(plt: Any, document: dict[str, Any]) -> Any:
    """(b2) The cost as the buffer grows: msg/s of each backlog series against the messages already waiting."""
    series: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for case in _measured(document):
        if case.get("backlog") and case.get("series"):
            series[case["series"]][int(case["backlog"])] = case
    series = {name: by_size for name, by_size in series.items() if len(by_size) >= 2}
    if not series:
        return None
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for name, by_size in series.items():
        xs = sorted(by_size)
        medians = [float(by_size[x]["subject"]["median"]) for x in xs]
        low = [m - float(by_size[x]["subject"]["min"]) for m, x in zip(medians, xs, strict=True)]
        high = [float(by_size[x]["subject"]["max"]) - m for m, x in zip(medians, xs, strict=True)]
        axes.errorbar(xs, medians, yerr=[low, high], fmt="-o", capsize=3, label=name)
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("messages already in the buffer")
    axes.set_ylabel("msg/s (median; bars: min-max)")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    axes.set_title(_title(document, "cost as the backlog grows"), fontsize=10)
    figure.tight_layout()
    return figure


def _payload(plt: Any, document: dict[str, Any]) -> Any:
    """(b) For each series (the same operation at several payload sizes): msg/s and MB/s against payload size."""
    series: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for case in _measured(document):
        if case.get("series"):
            # The first case of a series at a size is its reference (e.g. the target case at 100 B).
            series[case["series"]].setdefault(int(case.get("payload_bytes", 100)), case)
    series = {name: by_size for name, by_size in series.items() if len(by_size) >= 2}
    if not series:
        return None
    figure, (rates, bandwidth) = plt.subplots(1, 2, figsize=(11, 4.5))
    sizes: set[int] = set()
    for name, by_size in series.items():
        xs = sorted(by_size)
        sizes.update(xs)
        sides = [("subject", name, "-o")]
        labels = {by_size[x]["baseline"]["label"] if by_size[x]["baseline"] else None for x in xs}
        if len(labels) == 1 and None not in labels:  # one baseline measured at every size: draw it too
            sides.append(("baseline", f"{name} baseline: {labels.pop()}", "--s"))
        for side, label, style in sides:
            medians = [float(by_size[x][side]["median"]) for x in xs]
            rates.plot(xs, medians, style, label=label)
            bandwidth.plot(xs, [m * x / 1e6 for m, x in zip(medians, xs, strict=True)], style, label=label)
    for axes, ylabel in ((rates, "msg/s (median)"), (bandwidth, "MB/s of payload (median)")):
        axes.set_xscale("log", base=2)
        axes.set_yscale("log")
        axes.set_xticks(sorted(sizes))
        axes.set_xticklabels([_size(size) for size in sorted(sizes)])
        axes.set_xlabel("payload size")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3, which="both")
    rates.legend(fontsize=8)
    figure.suptitle(_title(document, "throughput by payload size"), fontsize=10)
    figure.tight_layout()
    return figure


def _drain(plt: Any, document: dict[str, Any]) -> Any:
    """(c) End to end: the relay's drain beside each case's baseline (the seed loop, the ceiling), with the rate
    the case's target asks of the relay as a dashed line."""
    cases = [case for case in _measured(document) if case.get("op") == "drain" and case["baseline"] is not None]
    if not cases:
        return None
    figure, axes = plt.subplots(figsize=(10, 5.5))
    labels: list[str] = []
    for index, case in enumerate(cases):
        for slot, side, colour in ((0, case["subject"], "tab:blue"), (1, case["baseline"], "tab:gray")):
            x = 2.5 * index + slot
            median = float(side["median"])
            error = [[median - float(side["min"])], [float(side["max"]) - median]]
            axes.bar(x, median, 0.8, yerr=error, color=colour, capsize=3)
            axes.annotate(f"{median:,.0f}", (x, median / 2), ha="center", va="center", fontsize=7, color="white")
            # Wrapped: the names of two bars side by side ran into each other on one line each.
            labels.append(f"{textwrap.fill(case['name'], 18)}\n{textwrap.fill(side['label'], 18)}")
        target = case.get("target")
        if target and target.get("kind") == "min_ratio":
            needed = float(target["threshold"]) * float(case["baseline"]["median"])
            x0 = 2.5 * index - 0.5
            axes.hlines(needed, x0, x0 + 2, colors="tab:red", linestyles="dashed")
            axes.annotate(f"target {float(target['threshold']):g}x baseline", (x0, needed), fontsize=7,
                          color="tab:red", xytext=(0, 3), textcoords="offset points")
    axes.set_xticks([2.5 * index + slot for index in range(len(cases)) for slot in (0, 1)])
    axes.set_xticklabels(labels, fontsize=6)
    axes.set_ylabel("msg/s (median; bars: min-max)")
    axes.set_title(_title(document, "drain end to end vs seed loop and ceiling"), fontsize=10)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
