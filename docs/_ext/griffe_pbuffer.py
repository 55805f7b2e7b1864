"""A griffe extension for pbuffer's API reference (mkdocs.yml loads it; it is not part of the package).

Two things the stock loader and Markdown rendering do not do for this codebase:

- ``pbuffer.backends`` lives outside ``pbuffer/`` in the repository (``[tool.setuptools.package-dir]`` in
  pyproject.toml maps it), so griffe's static finder cannot see it under ``pbuffer``. It is loaded from where
  the installed package has it, as a submodule of ``pbuffer``.
- The docstrings are reST-flavoured prose: Sphinx roles (``:class:`~pbuffer.X```), ``>>>`` examples and ``::``
  literal blocks. Roles become optional cross-references (a link when the target is on a page, plain code when
  it is not, never a broken reference), examples become ``pycon`` code blocks, ``::`` a colon.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import griffe

# Subpackages of pbuffer that the reference documents and that the repository keeps outside pbuffer/.
_MAPPED = ("backends",)
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|mod|exc|obj):`(?P<tilde>~?)(?P<target>[\w.]+)(?:\(\))?`")
_DOCTEST_START = re.compile(r"^(?P<indent>\s*)>>> ")


class PbufferDocs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "pbuffer":
            return
        self._load_mapped_packages(pkg, loader)
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = _markdown(obj.docstring.value, obj)

    @staticmethod
    def _load_mapped_packages(pkg: griffe.Module, loader: griffe.GriffeLoader) -> None:
        """Load ``pbuffer.backends`` from wherever the installed package finds it (pyproject.toml's package-dir)."""
        for name in _MAPPED:
            spec = importlib.util.find_spec(f"pbuffer.{name}")
            if name in pkg.members or spec is None or spec.origin is None:
                continue  # already found inside pbuffer/, or not installed
            # griffe has no public call for "this directory is that submodule"; its loader's own one is used.
            module = loader._load_module(name, Path(spec.origin), parent=pkg)
            pkg.set_member(name, module)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


def _markdown(text: str, obj: griffe.Object) -> str:
    text = _ROLE.sub(lambda match: _crossref(match, obj), text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.MULTILINE)  # reST "text::" before a literal block
    text = re.sub(r"^::$\n", "", text, flags=re.MULTILINE)
    return _fence_doctests(text)


def _crossref(match: re.Match[str], obj: griffe.Object) -> str:
    target = match["target"]
    title = target.rpartition(".")[2] if match["tilde"] else target
    identifier = _resolve(target, obj)
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


def _resolve(target: str, obj: griffe.Object) -> str:
    """The full path of a role's target: absolute ones as written, relative ones looked up from obj outwards."""
    if target.startswith("pbuffer."):
        return target
    first = target.split(".", maxsplit=1)[0]
    scope: griffe.Object | None = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        if first in scope.members:
            member = scope.members[first]
            rest = target[len(first):]
            # A name the module imported (``Buffer`` in pbuffer.aio) points at its definition.
            return f"{member.target_path}{rest}" if member.is_alias else f"{scope.path}.{target}"
        scope = scope.parent
    return target


def _fence_doctests(text: str) -> str:
    """Wrap each run of ``>>>`` lines and their output (up to a blank line) in a pycon code block."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        start = _DOCTEST_START.match(lines[i])
        if not start:
            out.append(lines[i])
            i += 1
            continue
        indent = start["indent"]
        out.extend(["", f"{indent}```pycon"])
        while i < len(lines) and lines[i].strip():
            out.append(lines[i])
            i += 1
        out.extend([f"{indent}```", ""])
    return "\n".join(out)
