"""No module of impls, bench or reports imports another that imports it back.

The graph is read from the source with `ast`, not by importing (so a module that needs
a GPU or an optional dependency is read all the same). The rule:

- A module is every .py file under impls/, bench/ (bench/models/, and bench/gpu/'s scripts
  by their paths, as bench.gpu.<name>) and reports/; a package is its __init__.py.
- An edge A -> B is any `import` or `from ... import` statement in A that names B, wherever
  it stands: at module level, in a try or if block, *and inside a function or method*. A
  function-level (lazy) import only delays the dependency; A still cannot work without B,
  and a cycle of lazy imports is a cycle all the same. Only imports under
  `if TYPE_CHECKING:` (never run) are left out.
- `from P import n` is an edge to P.n when that is a module, and to P (its __init__ runs)
  either way; `import a.b.c` is an edge to a.b.c and to a.b and a. Relative imports are
  resolved against A's package. An edge from A to a package that contains A is left out:
  Python imports that package before A in any case, so it is no dependency of A's.
- Imports of modules outside the three packages (torch, numpy, ...) and dynamic ones
  (`importlib.import_module` of a computed name, impls/__init__.py's lazy names) are not
  edges.

A cycle is a path A -> ... -> A in that graph; the test prints it with the line of each
import.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("impls", "bench", "reports")


def modules(root: Path, packages=PACKAGES) -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every .py file of `packages` under `root`."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if any(p == "__pycache__" or p.startswith(".") for p in parts):
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            out[".".join(parts)] = (path, is_package)
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:` (never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skipped |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return skipped


def _with_ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts), 0, -1)]


def imports(name: str, path: Path, is_package: bool, known) -> dict[str, int]:
    """The modules of `known` that module `name` imports: target -> line of its first import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = _type_checking_only(tree)
    package = name if is_package else name.rpartition(".")[0]
    named: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            named += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            named.append((source, node.lineno))
            named += [(f"{source}.{alias.name}", node.lineno) for alias in node.names
                      if f"{source}.{alias.name}" in known]
    inside = set(_with_ancestors(name))  # itself and the packages that contain it
    out: dict[str, int] = {}
    for target, line in named:
        for module in _with_ancestors(target):
            if module in known and module not in inside:
                out.setdefault(module, line)
    return out


def graph(root: Path = REPO, packages=PACKAGES) -> tuple[dict[str, dict[str, int]], dict[str, Path]]:
    known = modules(root, packages)
    edges = {name: imports(name, path, is_package, known) for name, (path, is_package) in known.items()}
    return edges, {name: path for name, (path, _) in known.items()}


def find_cycle(edges: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle [A, ..., A] of the graph, or None (depth-first search, in name order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_module_imports_one_that_imports_it_back():
    edges, files = graph()
    assert {"impls.base", "bench.cases", "bench.models.cases", "reports.load"} <= set(edges)
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle:\n" + "\n".join(
        f"  {a} -> {b}   ({files[a].relative_to(REPO)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:]))


def test_the_walk_sees_the_imports_it_should():
    """The graph holds edges of each kind the rule names (so an empty graph cannot pass)."""
    edges, _ = graph()
    assert "bench.names" in edges["bench.models.cases"]  # from ..names import ...
    assert "bench.models.cases" in edges["bench.cases"]  # inside from_id(): a lazy import counts
    assert "impls.shapes" in edges["impls.base"]  # from .shapes import ...
    assert "bench.schema" in edges["reports.load"]  # from bench import schema
    assert "impls.openmp" not in edges["impls.openmp._ext"]  # its own package: no edge


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .sub.c import g\n    return g\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import b\n"
                                      "def g():\n    from ..a import x\n")
    edges, _ = graph(tmp_path, ("pkg",))
    assert edges["pkg.b"] == {"pkg.sub.c": 2, "pkg.sub": 2}
    assert "pkg.b" not in edges["pkg.sub.c"]  # under TYPE_CHECKING
    assert "pkg.sub" not in edges["pkg.sub.c"]  # its own package
    assert find_cycle(edges) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.sub.c", "pkg.a"]
    (pkg / "sub" / "c.py").write_text("def g():\n    return 1\n")
    assert find_cycle(graph(tmp_path, ("pkg",))[0]) is None
