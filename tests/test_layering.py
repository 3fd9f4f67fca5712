"""Imports between packages run one way: analyze → compare → ml → imaging, report → imaging.

Every ``import`` and ``from ... import`` in the source is read with :mod:`ast`,
including imports inside functions and under ``TYPE_CHECKING``, and resolved to an
absolute module name (relative imports included).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import pacs_node

SOURCE_ROOT = Path(pacs_node.__file__).resolve().parent

#: package → packages of ``pacs_node`` its modules must never import.
FORBIDDEN = {
    "compare": ("analyze", "report"),
    "ml": ("analyze", "compare"),
    "imaging": ("analyze", "compare", "ml", "report"),
    "report": ("analyze", "compare", "ml"),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, absolute module names)`` of every import statement in one file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield node.lineno, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # `from pacs_node import analyze` imports a package, not just a name
            yield node.lineno, [origin, *(f"{origin}.{alias.name}" for alias in node.names)]


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """``path:line imports module`` for each import statement of ``package`` that reaches into ``forbidden``."""
    found = []
    for path in sorted((SOURCE_ROOT / package).rglob("*.py")):
        for line, names in sorted(_imported_modules(path)):
            bad = [
                name for name in names
                if any(name == f"pacs_node.{t}" or name.startswith(f"pacs_node.{t}.") for t in forbidden)
            ]
            if bad:
                found.append(f"{path.relative_to(SOURCE_ROOT.parent)}:{line} imports {bad[0]}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downwards(package: str) -> None:
    assert (SOURCE_ROOT / package / "__init__.py").is_file(), f"pacs_node.{package} is not a package"
    assert _violations(package, FORBIDDEN[package]) == []


def test_checker_sees_lazy_relative_and_package_imports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "pacs_node"
    (root / "ml").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "ml" / "__init__.py").write_text("")
    (root / "ml" / "bad.py").write_text(
        "def f():\n"
        "    from pacs_node.analyze.volume import NotAnalysable\n"
        "from ..analyze import series\n"
        "from pacs_node import analyze\n"
        "import pacs_node.analyze.pipeline\n"
        "from pacs_node.analyzer_not_a_match import x\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "SOURCE_ROOT", root)
    lines = [v.split(" imports ")[0] for v in _violations("ml", ("analyze",))]
    assert lines == ["pacs_node/ml/bad.py:2", "pacs_node/ml/bad.py:3", "pacs_node/ml/bad.py:4", "pacs_node/ml/bad.py:5"]
