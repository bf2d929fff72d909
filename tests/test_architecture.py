"""The package's shape, measured from its imports: no import loops, and no layer imports a higher one.

Every `import vlbridge...` / `from vlbridge... import ...` in src/ counts, at module level or
inside a function (a function-level import hides a loop from Python, not from this test).
Layers, lowest first (docs/ARCHITECTURE.md):

    base        errors, io, jsontext, lines, validate, runtime, checkpoint, config, assets (and the package itself)
    data        records, formats, the shapes world, the feature store
    models      registry, CLIP, encoders, LM, LiMBeR, decoding
    training | evaluation    side by side: neither imports the other
    api | study the Python API (vlbridge.load, models, search index) | stages, cache, report
    surfaces    cli, commands, serve (and `python -m vlbridge`)
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = {  # top-level name under vlbridge -> layer rank
    "": 0, "errors": 0, "io": 0, "jsontext": 0, "lines": 0, "validate": 0, "runtime": 0, "checkpoint": 0, "config": 0, "assets": 0,
    "data": 1,
    "models": 2,
    "training": 3, "evaluation": 3,
    "api": 4, "study": 4,
    "cli": 5, "commands": 5, "serve": 5, "__main__": 5,
}
# The one sanctioned upward edge: `vlbridge.load` in the package root imports the API inside the
# function on first call (a convenience entry point; nothing below the API calls it). Loops
# through it are still caught by test_no_import_loops.
ENTRY_POINTS = {("vlbridge", "vlbridge.api")}


def module_names() -> dict[str, Path]:
    """vlbridge module name -> file, for every .py under src/vlbridge."""
    names = {}
    for path in (SRC / "vlbridge").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the vlbridge modules it imports anywhere in its source."""
    names = module_names()

    def owner(name: str) -> str:
        while name not in names and "." in name:
            name = name.rsplit(".", 1)[0]
        return name if name in names else ""

    graph = {}
    for module, path in names.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {owner(alias.name) for alias in node.names if alias.name.startswith("vlbridge")}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vlbridge"):
                targets |= {owner(f"{node.module}.{alias.name}") for alias in node.names}
        graph[module] = targets - {module, ""}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while component[-1:] != [node]:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def top_name(module: str) -> str:
    """"vlbridge.models.clip" -> "models"; "vlbridge" -> ""."""
    return (module.split(".") + [""])[1]


def layer_of(module: str) -> int:
    return LAYERS[top_name(module)]


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in module_names() if top_name(m) not in LAYERS)
    assert not unplaced, f"modules outside every layer (add them to LAYERS and docs/ARCHITECTURE.md): {unplaced}"


def test_no_import_loops():
    assert cycles(import_graph()) == []


def test_no_layer_imports_a_higher_one():
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module) and (module, target) not in ENTRY_POINTS
    )
    assert upward == []


def test_training_and_evaluation_stay_side_by_side():
    crossing = sorted(
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if {top_name(module), top_name(target)} == {"training", "evaluation"}
    )
    assert crossing == []


def test_the_checker_sees_function_level_loops(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
