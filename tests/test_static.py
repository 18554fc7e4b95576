"""Static checks over all four distributions: strict mypy, ruff, and no import cycle.

The layout rules are in docs/architecture.md §2: one concern per module, no import cycle
(function-level imports included; only ``if TYPE_CHECKING:`` blocks, which never run, are
exempt).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Each distribution: (folder holding its pyproject.toml, its package).
DISTRIBUTIONS = [
    (ROOT, "hsds_backends"),
    (ROOT / "backends" / "containers", "hsds_backends_containers"),
    (ROOT / "backends" / "dask", "hsds_backends_dask"),
    (ROOT / "backends" / "lambda", "hsds_backends_lambda"),
]


@pytest.mark.parametrize(("folder", "package"), DISTRIBUTIONS, ids=[p for _, p in DISTRIBUTIONS])
def test_mypy_strict(folder: Path, package: str) -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=folder, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def test_ruff() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    paths = ["hsds_backends", "backends", "benchmarks"]
    r = subprocess.run([ruff, "check", "--select", "E,F,B,W", "--ignore", "E501", *paths], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------- import cycles


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for folder, package in DISTRIBUTIONS:
        base = folder / package
        for path in base.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module ``module`` imports, at any depth of its code (TYPE_CHECKING blocks excepted)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    found: set[str] = set()

    def resolve(name: str) -> None:
        # the deepest project module the dotted name starts with
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            cand = ".".join(parts[:n])
            if cand in known:
                if cand != module:
                    found.add(cand)
                return

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    resolve(alias.name)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here[: len(here) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for alias in child.names:
                    full = f"{mod}.{alias.name}"
                    if full in known:
                        resolve(full)
                    else:
                        resolve(mod)
            visit(child)

    visit(tree)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles() -> None:
    known = _modules()
    graph = {m: _imports(m, p, known) for m, p in known.items()}
    cycles = _cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
