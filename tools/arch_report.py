"""Figures that describe glmtune's architecture, read from the source with `ast` (nothing is imported).

    python tools/arch_report.py [PACKAGE_DIR] [--json]        (`make arch`)

- arrows: distinct module -> module imports inside the package, lazy imports inside functions included
- circles: import cycles (groups of modules that reach each other, more than one module each)
- floors: modules on the longest import chain, a circle counted as one module
- long modules (over 400 lines), long functions (over 40 lines), and `# fmt: skip` comments

`tests/test_architecture.py` reads the same import table (`module_imports`) to hold the layering.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

# The layers, lowest first: a module of one may import modules of its own layer and of layers with a lower rank.
# Layers of one rank (training, inference) are peers and do not import each other. A layer lists its packages and
# top-level modules; `glmtune` itself is the package's __init__ (the version).
LAYERS: dict[str, tuple[int, tuple[str, ...]]] = {
    "foundation": (
        0,
        (
            "glmtune",
            "glmtune.errors",
            "glmtune.recipe",
            "glmtune.recipe_files",
            "glmtune.console",
            "glmtune.rundir",
        ),
    ),
    "families": (1, ("glmtune.families",)),
    "data": (2, ("glmtune.data",)),
    "checkpoints": (3, ("glmtune.checkpoints",)),
    "training": (4, ("glmtune.training",)),
    "inference": (4, ("glmtune.inference",)),
    "commands": (5, ("glmtune.cli", "glmtune.bench")),
}
MODULE_LINES = 400
FUNCTION_LINES = 40
FMT_SKIP = "# fmt: skip"


def module_files(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (`pkg/__init__.py` is `pkg`)."""
    modules = {}
    for file in sorted(package.rglob("*.py")):
        parts = file.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return modules


def module_imports(package: Path) -> dict[str, dict[str, int]]:
    """Importing module -> {imported module of the package: first line that imports it}, lazy imports included."""
    modules = module_files(package)
    table: dict[str, dict[str, int]] = {}
    for name, file in modules.items():
        targets: dict[str, int] = {}
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"), str(file))):
            for target in _imported(node, name, file, modules):
                if target != name:
                    targets.setdefault(target, node.lineno)
        table[name] = targets
    return table


def _imported(node: ast.AST, module: str, file: Path, modules: dict[str, Path]) -> list[str]:
    """Package modules an import statement names: `from pkg import sub` names the submodule `pkg.sub`."""
    if isinstance(node, ast.Import):
        return [_owner(alias.name, modules) for alias in node.names if _owner(alias.name, modules)]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        package = module if file.name == "__init__.py" else module.rpartition(".")[0]
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    if len(found) < len(node.names) and _owner(base, modules):
        found.append(_owner(base, modules))
    return found


def _owner(dotted: str, modules: dict[str, Path]) -> str:
    """The longest package module that `dotted` names or lies in; '' for anything outside the package."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return ""


def layer_of(module: str) -> str:
    """The layer a module belongs to ('' when no layer lists it): its package's, or the one naming it."""
    for layer, (_, members) in LAYERS.items():
        if any(
            module == member or (member != "glmtune" and module.startswith(member + "."))
            for member in members
        ):
            return layer
    return ""


def may_import(importer: str, imported: str) -> bool:
    """The layering rule: an import stays in its layer or goes down to a layer of a lower rank."""
    own, other = layer_of(importer), layer_of(imported)
    return own == other or (bool(own) and bool(other) and LAYERS[other][0] < LAYERS[own][0])


def long_functions(file: Path) -> list[tuple[str, int]]:
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES
    ]


def report(package: Path) -> dict[str, Any]:
    import networkx as nx  # a dependency of torch, so present wherever glmtune is installed

    root = package.name
    graph = nx.DiGraph()
    for module, targets in module_imports(package).items():
        graph.add_node(module)
        graph.add_edges_from((module, target) for target in targets if target != root)
    layers = nx.DiGraph(
        (layer_of(a) or a, layer_of(b) or b) for a, b in graph.edges if layer_of(a) != layer_of(b)
    )  # a module no layer lists stands for itself
    files = module_files(package)
    lines = {name: len(file.read_text(encoding="utf-8").splitlines()) for name, file in files.items()}
    return {
        "floors": len(longest_chain(graph)),
        "longest_chain": longest_chain(graph),
        "layer_floors": len(longest_chain(layers)),
        "longest_layer_chain": longest_chain(layers),
        "arrows": graph.number_of_edges(),
        "circles": sorted(
            sorted(group) for group in nx.strongly_connected_components(graph) if len(group) > 1
        ),
        "long_modules": {name: count for name, count in lines.items() if count > MODULE_LINES},
        "long_functions": {
            f"{n}.{f}": count for n, file in files.items() for f, count in long_functions(file)
        },
        "fmt_skip": sum(file.read_text(encoding="utf-8").count(FMT_SKIP) for file in files.values()),
    }


def longest_chain(graph) -> list[str]:
    """Modules on the longest import chain, importer first; every module of a circle on it counts."""
    import networkx as nx

    condensed = nx.condensation(graph)
    size = {node: len(condensed.nodes[node]["members"]) for node in condensed}
    best: dict[int, tuple[int, list[int]]] = {}  # node -> (modules below and including it, its chain)
    for node in reversed(list(nx.topological_sort(condensed))):
        below = max(
            (best[child] for child in condensed.successors(node)), default=(0, []), key=lambda b: b[0]
        )
        best[node] = (size[node] + below[0], [node, *below[1]])
    chain = max(best.values(), key=lambda b: b[0])[1]
    return [module for node in chain for module in sorted(condensed.nodes[node]["members"])]


def render(figures: dict[str, Any]) -> str:
    """The figures as a short text, one line each, with what they count underneath."""
    rows = [
        ("floors", figures["floors"], [" -> ".join(figures["longest_chain"])]),
        ("layer floors", figures["layer_floors"], [" -> ".join(figures["longest_layer_chain"])]),
        ("arrows", figures["arrows"], []),
        ("circles", len(figures["circles"]), [" <-> ".join(group) for group in figures["circles"]]),
        (f"modules > {MODULE_LINES} lines", len(figures["long_modules"]), _counted(figures["long_modules"])),
        (
            f"functions > {FUNCTION_LINES} lines",
            len(figures["long_functions"]),
            _counted(figures["long_functions"]),
        ),
        (FMT_SKIP, figures["fmt_skip"], []),
    ]
    return "\n".join(
        f"{title:<22} {value}" + "".join(f"\n    {line}" for line in lines) for title, value, lines in rows
    )


def _counted(lines_by_name: dict[str, int]) -> list[str]:
    return [f"{name} ({lines} lines)" for name, lines in lines_by_name.items()]


def main(argv: list[str]) -> None:
    args = [arg for arg in argv if arg != "--json"]
    package = Path(args[0]) if args else Path(__file__).resolve().parents[1] / "glmtune"
    figures = report(package)
    print(json.dumps(figures, indent=2) if "--json" in argv else render(figures))


if __name__ == "__main__":
    main(sys.argv[1:])
