"""The losses package imports without circles, and CGCL_IMPLS is defined once.

Sources are parsed with ``ast``, nothing is imported, and every import counts wherever it sits
(module level or inside a function: a lazy import dodges a circle at import time but is still
one), absolute or relative, and ``importlib.import_module`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOSSES = "mars_jax.losses"
LOSSES_DIR = ROOT.joinpath(*LOSSES.split("."))
OBJECTIVE = ROOT / "mars_jax" / "train" / "objective.py"
IMPLS = ("dense", "blockwise", "sharded")


class Module:
    def __init__(self, name: str, source: str, is_package: bool = False):
        self.name, self.tree, self.is_package = name, ast.parse(source), is_package


def package_modules(directory: Path = LOSSES_DIR, package: str = LOSSES) -> dict[str, Module]:
    modules = {}
    for path in sorted(directory.rglob("*.py")):
        parts = path.relative_to(directory).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join((package, *(parts[:-1] if is_package else parts)))
        modules[name] = Module(name, path.read_text(), is_package)
    return modules


def _resolve(module: Module, level: int, name: str | None) -> str:
    """The absolute name of ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    base = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, *([name] if name else [])])


def imported(module: Module, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports, at any depth of its syntax tree.

    ``from pkg import name`` imports ``pkg.name`` when that is a module, else ``pkg`` (its
    ``__init__``): ``from mars_jax.losses.cgcl import HardNegatives`` inside cgcl/dense.py
    would close a circle through cgcl/__init__.py, which imports dense.py.
    """
    names = set()
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    return {name for name in names if name in known and name != module.name}


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: imported(module, known) for name, module in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_losses_import_graph_is_acyclic():
    graph = import_graph(package_modules())
    assert f"{LOSSES}.cgcl.common" in graph  # the walk really found the subpackage
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cgcl_modules_import_only_downwards():
    """Implementations import only common (and, for sharded, blockwise); cgcl_loss imports
    them at the top of cgcl/__init__.py, and nothing below imports it back."""
    graph = import_graph(package_modules())
    cgcl = f"{LOSSES}.cgcl"
    expected = {
        "common": set(),
        "dense": {"common"},
        "blockwise": {"common"},
        "sharded": {"common", "blockwise"},
        "alignment": {"common"},
    }
    for name, deps in expected.items():
        assert graph[f"{cgcl}.{name}"] == {f"{cgcl}.{d}" for d in deps}, name
    assert {f"{cgcl}.{name}" for name in expected} - {f"{cgcl}.common"} <= graph[cgcl]


def test_no_imports_inside_functions():
    """Lazy imports are how the old cgcl.py dodged its circle; none may hide one again."""
    for name, module in package_modules().items():
        for func in ast.walk(module.tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                for node in ast.walk(func):
                    assert not isinstance(node, ast.Import | ast.ImportFrom), (
                        f"{name}:{node.lineno} imports inside {func.name}()")


@pytest.mark.parametrize("layout", ["lazy", "relative"])
def test_cycle_detection_sees_lazy_and_relative_imports(layout):
    """The checker itself: the old circle (cgcl.py importing cgcl_blockwise.py inside a
    function, which imports helpers from cgcl.py) and a relative-import one are found."""
    if layout == "lazy":
        modules = [
            Module(f"{LOSSES}.cgcl", "def cgcl_loss():\n"
                                     "    from mars_jax.losses.cgcl_blockwise import terms\n"),
            Module(f"{LOSSES}.cgcl_blockwise", "from mars_jax.losses.cgcl import check_pair\n"),
        ]
    else:
        modules = [
            Module(f"{LOSSES}.cgcl", "from . import dense\n", is_package=True),
            Module(f"{LOSSES}.cgcl.dense", "from . import common\nfrom .. import cgcl\n"),
            Module(f"{LOSSES}.cgcl.common", "import numpy\n"),
        ]
    graph = import_graph({m.name: m for m in modules})
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1], graph
    assert find_cycle({**graph, f"{LOSSES}.cgcl": set()}) is None


def _objective_tree() -> ast.Module:
    return ast.parse(OBJECTIVE.read_text())


def test_objective_imports_cgcl_impls_instead_of_defining_them():
    tree = _objective_tree()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        for target in targets:
            for name in ast.walk(target):
                assert not (isinstance(name, ast.Name) and name.id == "CGCL_IMPLS"), (
                    f"objective.py:{node.lineno} defines its own CGCL_IMPLS")
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            assert sorted(values) != sorted(IMPLS), (
                f"objective.py:{node.lineno} spells out the CGCL impls; import CGCL_IMPLS")
    sources = [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and any(alias.name == "CGCL_IMPLS" for alias in node.names)]
    assert sources and all(s == LOSSES or s.startswith(f"{LOSSES}.") for s in sources), sources


def test_cgcl_impls_is_one_object():
    from mars_jax.losses import cgcl
    from mars_jax.losses.cgcl import common
    from mars_jax.train import objective

    assert cgcl.CGCL_IMPLS == IMPLS
    assert objective.CGCL_IMPLS is cgcl.CGCL_IMPLS is common.CGCL_IMPLS
