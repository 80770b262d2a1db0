"""The house's rules (docs/architecture.md), read off the source: imports go down the layers, no import circle,
an import inside a function only with its reason, no module over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "moesim"

LAYERS = (
    ("errors", "reuse", "units"),
    ("cluster", "workload", "routing"),
    ("models",),
    ("scenario",),
    ("cost",),
    ("sim",),
    ("serving", "executor"),
    ("validation",),
    ("planning",),
    ("cli",),
    ("__init__", "__main__"),
)
"""Bottom to top: a package may import the packages of the layers below it, never its own layer's others or above
(docs/architecture.md)."""
LAYER_OF = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["moesim", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imports(module: str, path: Path, top_level_only: bool) -> list[tuple[str, ast.AST]]:
    """The moesim modules (or packages) `module` imports, with the import's node."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        # `from moesim import units` names the module, not the package's face
        found += [(name, node) for name in names if name.startswith("moesim.")]
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_is_in_a_layer() -> None:
    rooms = {_room(module) for module in _modules()}
    assert rooms <= set(LAYER_OF), f"add {sorted(rooms - set(LAYER_OF))} to LAYERS and docs/architecture.md"


def test_imports_go_down_the_layers() -> None:
    """Every import between packages, at the top or inside a function, points to a lower layer."""
    modules = _modules()
    climbing = []
    for module, path in modules.items():
        for name, _ in _imports(module, path, top_level_only=False):
            if name not in modules:
                continue  # `from moesim.x import name`: the module is the other entry
            here, there = _room(module), _room(name)
            if here != there and LAYER_OF[there] >= LAYER_OF[here]:
                climbing.append(f"{module} -> {name}")
    assert not climbing, climbing


def test_no_import_circle() -> None:
    modules = _modules()
    graph = nx.DiGraph()
    for module, path in modules.items():
        for name, _ in _imports(module, path, top_level_only=True):
            if name in modules and name != module:
                graph.add_edge(module, name)
    assert not list(nx.simple_cycles(graph))


def test_imports_inside_functions_say_why() -> None:
    """Outside the CLI (whose commands import what they use, for its start-up), an import inside a function keeps
    a heavy or optional dependency off a path that does not need it, and says so: on its line, the line above, or
    another import of the same function (`import matplotlib  # ...` covers its pyplot)."""
    silent = []
    for module, path in _modules().items():
        if _room(module) == "cli":
            continue
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            imports = [node for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))]
            said = [
                any("#" in line for line in lines[node.lineno - 1 : node.end_lineno])
                or lines[node.lineno - 2].strip().startswith("#")
                for node in imports
            ]
            if imports and not any(said):
                silent += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for node in imports]
    assert not silent, silent


def test_no_module_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long
