"""Tests on every installed Python 3.10-3.13: `nox` (all), `nox -s conformance-3.10`, `nox -s tests-3.13`."""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _expose_pyenv_versions() -> None:
    """Let `python3.X` resolve through pyenv's shims for every installed 3.10-3.13 (keeping the default first)."""
    pyenv = shutil.which("pyenv")
    if pyenv is None or os.environ.get("PYENV_VERSION"):
        return
    listed = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, check=False).stdout
    current = subprocess.run([pyenv, "version-name"], capture_output=True, text=True, check=False).stdout.strip()
    wanted = [v for v in listed.split() if any(v.startswith(p + ".") for p in PYTHONS)]
    if wanted:
        os.environ["PYENV_VERSION"] = ":".join(dict.fromkeys([*current.split(":"), *wanted]))


_expose_pyenv_versions()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole test suite."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python=PYTHONS)
def conformance(session: nox.Session) -> None:
    """The Buffer conformance suite on every backend, sync and async."""
    session.install("-e", ".[dev]")
    session.run("python", "-m", "pytest", "-m", "conformance", *session.posargs)
