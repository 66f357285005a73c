"""The package layers only look down (docs/architecture.md): no upward, sideways or circular imports.

Every `import traitlens.X` / `from traitlens.X import ...` in the source is read from the AST, including imports
inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "traitlens"

#: Bottom to top. A unit may import units of lower layers and itself; never a peer of its own layer or above.
LAYERS: list[set[str]] = [
    {"_io", "_version", "ops"},
    {"data"},
    {"backbones"},
    {"explain", "train"},
    {"models", "viz"},
    {"metrics"},
    {"evaluation"},
    {"report"},
    {"server", "quickstart"},
    {"cli"},
    {"__main__"},
]
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
#: The package facade re-exports the public API of every layer.
FACADE = "__init__"
#: Line budget of one module; longer ones say why in their docstring ("one job" as the first words of a reason).
MAX_LINES = 450


def _unit(module: str) -> str:
    """`traitlens.models.intr` -> "models"; `traitlens` -> the facade."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    name = ".".join(rel.parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, int]]:
    """(imported traitlens module, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("traitlens")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "traitlens":  # `from traitlens import models` names submodules
                found += [(f"traitlens.{a.name}", node.lineno) for a in node.names]
            elif module.startswith("traitlens."):
                found.append((module, node.lineno))
    return found


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {_unit(_module_name(p)) for p in _sources()} - {FACADE}
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS and docs/architecture.md"


def test_imports_only_look_down() -> None:
    bad = []
    for path in _sources():
        mine = _unit(_module_name(path))
        if mine == FACADE:
            continue
        for module, line in _imports(path):
            theirs = _unit(module)
            if theirs == mine:
                continue
            if theirs == FACADE or LEVEL.get(theirs, -1) >= LEVEL[mine]:
                bad.append(f"{path.relative_to(SRC)}:{line} ({mine}, layer {LEVEL[mine]}) imports {module}")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_no_private_module_of_another_package() -> None:
    bad = []
    for path in _sources():
        mine = _unit(_module_name(path))
        for module, line in _imports(path):
            parts = module.split(".")
            if _unit(module) != mine and any(p.startswith("_") and not p.startswith("__") for p in parts[2:]):
                bad.append(f"{path.relative_to(SRC)}:{line} imports {module}")
    assert not bad, "imports of another package's private module:\n" + "\n".join(bad)


def test_no_import_cycles_between_modules() -> None:
    """Module-level imports (those that run on import) form no cycle, inside a package either."""
    graph: dict[str, set[str]] = {}
    names = {_module_name(p) for p in _sources()}
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        here = _module_name(path)
        deps = set()
        for module, line in _imports(path):
            if any(getattr(n, "lineno", -1) == line for n in top) and module in names and module != here:
                deps.add(module)
        graph[here] = deps
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle.extend([*path[path.index(dep):], dep])
                return True
            if state.get(dep) is None and visit(dep, [*path, dep]):
                return True
        state[node] = 2
        return False

    for n in sorted(graph):
        if state.get(n) is None and visit(n, [n]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_modules_stay_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert "Longer than" in doc, (
        f"{path.relative_to(SRC)} has {lines} lines (> {MAX_LINES}): split it by job, or say why in its docstring "
        "('Longer than ... because ...')"
    )
