"""What the numbers were measured on: a rate means little without the machine, versions and commit."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import pbuffer

from .e2e import nats_server_version

__all__ = ["machine_info"]

_PEERS = ("persist-queue", "litequeue")


def machine_info() -> dict[str, Any]:
    scratch = tempfile.gettempdir()
    return {
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite_version": sqlite3.sqlite_version,
        "pbuffer_version": pbuffer.__version__,
        "peers": {name: _version(name) for name in _PEERS},
        # The drain cases' other side: the client library and the server binary they start.
        "nats_py_version": _version("nats-py"),
        "nats_server_version": nats_server_version(),
        "git_commit": _git_commit(),
        # sqlite's commit cost (and so every sqlite rate) depends on the filesystem under the temp directory.
        "tmpdir": scratch,
        "tmpdir_filesystem": _filesystem(scratch),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    # Asked of the directory holding this package: a checkout answers, an installed wheel does not.
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else None


def _filesystem(path: str) -> str | None:
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    resolved = os.path.realpath(path)
    best: tuple[int, str] | None = None
    for entry in entries:
        if len(entry) < 3:
            continue
        mount_point = entry[1]
        inside = resolved == mount_point or resolved.startswith(mount_point.rstrip("/") + "/")
        if inside and (best is None or len(mount_point) > best[0]):
            best = (len(mount_point), entry[2])
    return None if best is None else best[1]
