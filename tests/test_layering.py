"""The layer rules of docs/architecture.md, checked on the source of every mars_jax module.

Each module is parsed with ``ast`` (nothing is imported), and every import counts wherever it
sits: module level, inside functions, under ``if TYPE_CHECKING``, relative or absolute, and
``importlib.import_module("mars_jax....")`` with a literal name.

Layers, top to bottom (a layer may import only the layers above it):

  typed_config, parallel, config_files -> data -> models -> losses -> metrics -> tasks
  -> train, inference, export -> main (and every package's ``__main__``)

and, stricter than the order: models and losses know nothing of data or training, data knows
nothing of models.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "mars_jax"
SOURCE = Path(__file__).resolve().parents[1] / PACKAGE

# Top-level parts of the package, in layer order; parts on one line are siblings.
LAYER_ORDER = (
    ("typed_config", "parallel", "config_files"),
    ("data",),
    ("models",),
    ("losses",),
    ("metrics",),
    ("tasks",),
    ("train", "inference", "export"),
    ("main", "register", "predict", "respond", "ablation", "cli_errors"),
)
LEVEL = {part: i for i, parts in enumerate(LAYER_ORDER) for part in parts}
FOUNDATION = {"typed_config", "parallel", "config_files"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return ".".join(base + ([name] if name else []))


def _is_submodule(name: str) -> bool:
    path = SOURCE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> list[tuple[str, int]]:
    """(imported mars_jax module, line) for every import in ``path``, at any depth.

    ``from mars_jax import parallel`` counts as ``mars_jax.parallel`` (a submodule), and
    ``from mars_jax.models import MaRS`` as ``mars_jax.models``.
    """
    module = module_name(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = (_resolve_relative(module, path.name == "__init__.py", node.level,
                                        node.module) if node.level else node.module or "")
            found.append((source, node.lineno))
            found += [(f"{source}.{alias.name}", node.lineno) for alias in node.names
                      if _is_submodule(f"{source}.{alias.name}")]
        elif (isinstance(node, ast.Call) and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name)
                       and node.func.id in ("import_module", "__import__")))):
            found.append((node.args[0].value, node.lineno))
    return sorted(((name, line) for name, line in found
                   if name == PACKAGE or name.startswith(PACKAGE + ".")),
                  key=lambda item: (item[1], item[0]))


def part_of(module: str) -> str | None:
    """``mars_jax.models.vit`` -> ``models``; the bare package -> None. A package's
    ``__main__`` (``python -m mars_jax.export``) is a command line: the entry points' layer."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "main"
    return parts[1] if len(parts) > 1 else None


def all_imports() -> list[tuple[Path, str, str, int]]:
    """(file, importing part, imported part, line) for every mars_jax -> mars_jax import."""
    edges = []
    for path in sorted(SOURCE.rglob("*.py")):
        here = part_of(module_name(path))
        for name, line in imports_of(path):
            there = part_of(name)
            if here is not None and there is not None and there != here:
                edges.append((path, here, there, line))
    return edges


def violations(layer: str, forbidden: set[str]) -> list[str]:
    return [f"{path.relative_to(SOURCE.parent)}:{line}: {PACKAGE}.{here} imports "
            f"{PACKAGE}.{there}"
            for path, here, there, line in all_imports()
            if here == layer and there in forbidden]


LOWER_THAN_DATA = {"losses", "metrics", "tasks", "train", "inference", "export", "main"}
RULES = [
    pytest.param("data", {"models"} | LOWER_THAN_DATA, id="data-knows-no-models"),
    pytest.param("models", {"data"} | LOWER_THAN_DATA, id="models-know-no-data-or-training"),
    pytest.param("losses", {"data", "models"} | LOWER_THAN_DATA,
                 id="losses-know-no-data-models-or-training"),
    pytest.param("typed_config", set(LEVEL) - FOUNDATION, id="typed_config-imports-no-layer"),
    pytest.param("parallel", set(LEVEL) - FOUNDATION, id="parallel-imports-no-layer"),
]


@pytest.mark.parametrize("layer, forbidden", RULES)
def test_layer_rule(layer, forbidden):
    found = violations(layer, forbidden)
    assert not found, "layer rule broken:\n  " + "\n  ".join(found)


def test_no_layer_imports_one_below_it():
    found = [f"{path.relative_to(SOURCE.parent)}:{line}: {PACKAGE}.{here} imports "
             f"{PACKAGE}.{there}, a lower layer"
             for path, here, there, line in all_imports()
             if here in LEVEL and there in LEVEL and LEVEL[there] > LEVEL[here]]
    assert not found, "\n  ".join(["layer order broken:", *found])


def test_every_top_level_part_has_a_layer():
    parts = {path.stem if path.suffix == ".py" else path.name
             for path in SOURCE.iterdir()
             if (path.suffix == ".py" and path.stem != "__init__")
             or (path / "__init__.py").is_file()}
    unplaced = sorted(parts - set(LEVEL))
    assert not unplaced, (f"{unplaced} have no place in LAYER_ORDER: add them here and to "
                          "docs/architecture.md")


def test_the_checker_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The parser itself: nested, relative, from-package and importlib imports all count."""
    package = tmp_path / PACKAGE
    (package / "models").mkdir(parents=True)
    (package / "data").mkdir()
    for path in (package / "__init__.py", package / "models" / "__init__.py",
                 package / "data" / "__init__.py", package / "parallel.py"):
        path.write_text("")
    (package / "models" / "vit.py").write_text(
        "import importlib\n"
        "from .. import parallel\n"
        "from ..data import contract\n"
        "def f():\n"
        "    import mars_jax.train.pretrain\n"
        "    from mars_jax import data\n"
        "    return importlib.import_module('mars_jax.losses.cgcl')\n")
    monkeypatch.setitem(globals(), "SOURCE", package)
    names = {name for name, _ in imports_of(package / "models" / "vit.py")}
    assert names >= {"mars_jax.parallel", "mars_jax.data", "mars_jax.train.pretrain",
                     "mars_jax.losses.cgcl"}
    assert violations("models", {"data", "train", "losses"}) == [
        "mars_jax/models/vit.py:3: mars_jax.models imports mars_jax.data",
        "mars_jax/models/vit.py:5: mars_jax.models imports mars_jax.train",
        "mars_jax/models/vit.py:6: mars_jax.models imports mars_jax.data",
        "mars_jax/models/vit.py:7: mars_jax.models imports mars_jax.losses",
    ]
