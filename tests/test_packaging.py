"""The distribution: one wheel holding the core, backends, migrations and the benchmark harness, and nothing
else; installed without the checkout (non-editable), it imports every backend, finds its migrations and runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a clean copy: setuptools leaves build/ behind, and stale files there would end up in the wheel.
    source = tmp_path_factory.mktemp("source") / "pbuffer"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".nox", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(out), str(source)], check=True, cwd=out)
    (built,) = out.glob("pbuffer-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "pbuffer/__init__.py", "pbuffer/py.typed", "pbuffer/buffer.py", "pbuffer/testing/conformance.py",
        "pbuffer/backends/__init__.py", "pbuffer/backends/memory.py", "pbuffer/backends/sql.py",
        "pbuffer/migrations/env.py", "pbuffer/migrations/script.py.mako", "pbuffer/migrations/versions/0001_initial.py",
        "pbuffer/migrations/versions/0002_claims_and_counters.py",
        "pbuffer/migrations/versions/0003_writer_generation.py",
        "pbuffer/migrations/versions/0004_deleted_totals.py",
        "pbuffer/migrations/versions/0005_popped_head.py",
        "pbuffer/benchmarks/__init__.py", "pbuffer/benchmarks/__main__.py",
        # Every room of the package, and the documented paths kept as re-exports.
        "pbuffer/buffering/group_commit.py", "pbuffer/relay/jetstream.py", "pbuffer/schema/recovery.py",
        "pbuffer/metrics/__init__.py", "pbuffer/examples/echo_pb2.py", "pbuffer/jetstream.py", "pbuffer/echo.py",
        "pbuffer/echo_pb2.py", "pbuffer/cli/__init__.py", "pbuffer/cli/watch.py",
    ]:
        assert expected in names, expected
    assert not [n for n in names if n.startswith(("tests/", "backends/", "migrations/", "benchmarks/"))]
    assert not [n for n in names if "/results/" in n], "committed benchmark results must stay out of the wheel"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    for extra in ("postgresql", "mysql", "demo", "bench", "dev"):
        assert f"Provides-Extra: {extra}" in text
    assert "License-Expression: Apache-2.0" in text
    license_file = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
    assert "Apache License" in zipfile.ZipFile(wheel).read(license_file).decode()
    for label in ("Source", "Issues", "Changelog", "Documentation"):
        assert f"Project-URL: {label}, https://" in text, label
    entry_points = zipfile.ZipFile(wheel).read(metadata.replace("METADATA", "entry_points.txt")).decode()
    assert "pbuffer = pbuffer.cli:main" in entry_points
    # The built-in backends are found by their classes' schemes (pbuffer.registry), not through entry points.
    assert "[pbuffer.backends]" not in entry_points


def test_installed_wheel_works_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(wheel)], check=True)
    program = f"""
import json, pathlib, pbuffer
from pbuffer.backends import memory, sql, versioning
assert pathlib.Path(pbuffer.__file__).is_relative_to({str(target)!r}), pbuffer.__file__
assert pathlib.Path(sql.__file__).is_relative_to({str(target)!r}), sql.__file__
assert pathlib.Path(versioning.SCRIPT_LOCATION).is_relative_to({str(target)!r}), versioning.SCRIPT_LOCATION
assert versioning.head_revision() == "0005"
with pbuffer.open("sqlite:///{tmp_path}/b.db") as buf:
    saved = buf.save(b"x", subject="a")
    assert buf.pop().id == saved.id
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
    out = tmp_path / "bench.json"
    bench = subprocess.run([sys.executable, "-m", "pbuffer.benchmarks", "--quick", "--scale", "0.0005",
                            "--json", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert bench.returncode == 0, bench.stderr
    assert json.loads(out.read_text())["cases"]


def test_modules_stay_within_the_sizes_the_project_holds_them_to() -> None:
    """The contract a backend author reads (pbuffer/buffer.py) stays short, and no module grows into several jobs:
    at most 350 lines for buffer.py, 500 for every other module of pbuffer/ and backends/ (the conformance suite
    and generated ``*_pb2`` modules aside)."""
    limits = {ROOT / "pbuffer" / "buffer.py": 350}
    exempt = {ROOT / "pbuffer" / "testing" / "conformance.py"}
    too_long = []
    for module in sorted([*(ROOT / "pbuffer").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]):
        if module in exempt or module.name.endswith("_pb2.py"):
            continue
        lines = len(module.read_text(encoding="utf-8").splitlines())
        if lines > limits.get(module, 500):
            too_long.append(f"{module.relative_to(ROOT)}: {lines} lines (at most {limits.get(module, 500)})")
    assert not too_long, "\n".join(too_long)
