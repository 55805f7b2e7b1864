"""The run's document as a markdown table (for people and results/) and as JSON (for tools)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["filtered", "markdown", "write_json"]


def write_json(document: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def filtered(document: dict[str, Any], *, url: bool = True) -> str:
    """What a run was filtered to, as its options read (``""`` for an unfiltered run): for headers and titles.
    ``url``: include ``--url`` (the table names it on a line of its own)."""
    selection = document.get("selection") or {}
    parts = []
    chosen = selection.get("cases") or []
    if len(chosen) > 3:  # a title has room for a few names, not a list
        parts.append(f"--case x{len(chosen)} ({', '.join(repr(name) for name in chosen[:2])}, ...)")
    elif chosen:
        parts.append("--case " + ", ".join(repr(name) for name in chosen))
    for key, option in (("ops", "--ops"), ("backends", "--backend")):
        if selection.get(key):
            parts.append(f"{option} {','.join(selection[key])}")
    if url and selection.get("url"):
        parts.append(f"--url {selection['url']}")
    return " ".join(parts)


def markdown(document: dict[str, Any]) -> str:
    machine = document["machine"]
    peers = ", ".join(f"{name} {version or 'not installed'}" for name, version in machine["peers"].items())
    nats = (f"nats-py {machine.get('nats_py_version') or 'not installed'}, "
            f"nats-server {machine.get('nats_server_version') or 'not installed'}")
    lines = [
        f"## pbuffer benchmarks: {document['mode']} mode, scale {document['scale']:g}",
        "",
        f"- {machine['date_utc']}, commit {machine['git_commit'] or 'unknown'}, "
        f"pbuffer {machine['pbuffer_version']}, {machine['python']}, sqlite {machine['sqlite_version']}, {peers}, "
        f"{nats}",
        f"- {machine['cpu_model']}, {machine['cpu_count']} cores ({machine['cpu_usable']} usable), "
        f"{machine['platform']}; temp dir {machine['tmpdir']} ({machine['tmpdir_filesystem'] or 'unknown fs'})",
        *([f"- buffer under test (--url): {document['url']}, used as given; every case is named url.*"]
          if document.get("url") else []),
        *([f"- selected: {selection}"] if (selection := filtered(document, url=False)) else []),
        f"- {document['payload_bytes']}-byte payloads unless a case's name gives another size (1KiB, 64KiB); "
        f"{document['reps']} timed repetitions per case"
        f"{' after a warm-up' if document.get('warmup', True) else ' (no warm-up)'}, "
        "each in a fresh temp directory; baseline and subject alternate within each repetition; ratio = median "
        f"of the per-repetition subject/baseline ratios; total {document['duration_s']:.0f} s",
        "- msg/s unless a cell names another unit; a case may set its own repetitions (its note says so)",
        _memory_line(document),
        "",
        "| case | msg/s (median) | spread (min-max) | baseline | baseline msg/s | ratio | target | result "
        "| peak RSS MB |",
        "|---|---:|---:|---|---:|---:|---|---|---:|",
    ]
    notes: list[str] = []
    for case in document["cases"]:
        lines.append(_row(case))
        if case["note"]:
            notes.append(f"{len(notes) + 1}. **{case['name']}**: {case['note']}")
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def _row(case: dict[str, Any]) -> str:
    subject, baseline, target = case["subject"], case["baseline"], case["target"]
    measured = case["status"] == "ok"
    unit = case.get("unit", "msg/s")
    cells = [
        case["name"],
        _value(subject["median"], unit) if measured else "-",
        _spread(subject, unit) if measured else "-",
        baseline["label"] if baseline else "-",
        _value(baseline["median"], unit) if baseline and measured else "-",
        f"{case['ratio']:.2f}x" if case["ratio"] is not None else "-",
        _target_text(target),
        _result(case),
        _memory(case.get("memory")),
    ]
    return "| " + " | ".join(cells) + " |"


def _memory_line(document: dict[str, Any]) -> str:
    if not document.get("isolated", False):
        return "- run in one process (--in-process): no peak RSS per case"
    return ("- peak RSS: of the process that ran the case (one per case, forked from the harness after its imports): "
            "setup, warm-up and every repetition of both sides; in brackets, the largest of the processes the case "
            "started (producers, the drain child, nats-server); MB of 10^6 bytes")


def _memory(memory: dict[str, Any] | None) -> str:
    if not memory:
        return "-"
    text = f"{memory['peak_rss_mb']:,.0f}"
    if memory.get("children_peak_rss_mb"):
        text += f" ({memory['children_peak_rss_mb']:,.0f})"
    return text


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _spread(side: dict[str, Any], unit: str) -> str:
    low, high = _value(side["min"], unit), _value(side["max"], unit)
    if unit != "msg/s":
        low = low.removesuffix(f" {unit}")
    return f"{low}-{high}"


def _value(value: float, unit: str) -> str:
    """A rate as a bare number (the column's unit); any other unit is named in the cell (3 significant digits
    below 100: a stats() call may take a few hundredths of a millisecond)."""
    if unit == "msg/s":
        return _rate(value)
    return f"{value:,.1f} {unit}" if value >= 100 else f"{value:.3g} {unit}"


def _target_text(target: dict[str, Any] | None) -> str:
    if target is None:
        return "-"
    threshold = target["threshold"]
    if target["kind"] == "min_rate":
        return f">= {threshold:,.0f} msg/s"
    if target["kind"] == "min_ratio":
        return f"ratio >= {threshold:g}x"
    if target["kind"] == "below":
        return f"max < {threshold:g} {target.get('unit', '')}".rstrip()
    return f"slowdown <= {threshold:g}x"


def _result(case: dict[str, Any]) -> str:
    if case["status"] != "ok":
        return str(case["status"])
    target = case["target"]
    if target is None:
        return "(no target)"
    measured = target["measured"]
    if target["kind"] == "min_rate":
        shown = f"{measured:,.0f} msg/s"
    elif target["kind"] == "below":
        shown = f"max {_value(measured, target.get('unit', 'msg/s'))}"
    else:
        shown = f"{measured:.2f}x"
    if target["kind"] == "max_slowdown":
        shown = f"slowdown {shown}"
    return f"met ({shown})" if target["met"] else f"**MISSED** ({shown})"
