"""The direction of imports inside blockfs: tools -> features (a row) -> views -> store -> format -> errors.

Every module of the package is read with :mod:`ast` (imports inside functions count too) and placed in
one layer by the longest matching name below; a module may import its own layer and the layers under
it, never one above. A module that no layer names fails the test, so a new one must be placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import blockfs

PACKAGE = Path(blockfs.__file__).parent

#: Highest first. The tools hold the package root, the compatibility shims (old module paths) and the
#: compatibility face ``Directory``, which delegates to the views and, for ``comm=`` and ``to_dask()``,
#: to two features. The features form a row: each may use the ones below it, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("tools", ("blockfs", "blockfs.__main__", "blockfs.cli", "blockfs.demo", "blockfs.directory", "blockfs.check",
               "blockfs.repair", "blockfs.info", "blockfs.relocate", "blockfs.mv", "blockfs.rebase",
               "blockfs.blockfs2tif", "blockfs.blockfs2jp2k", "blockfs.blockfs2hdf5", "blockfs.tif2blockfs")),
    ("serve", ("blockfs.serve",)),
    ("napari", ("blockfs.napari",)),
    ("interop", ("blockfs.interop",)),
    ("pyramid", ("blockfs.pyramid",)),
    ("convert", ("blockfs.convert",)),
    ("ops", ("blockfs.ops",)),
    ("parallel", ("blockfs.parallel",)),
    ("views", ("blockfs.volume", "blockfs.writable", "blockfs.planes")),
    ("store", ("blockfs.store", "blockfs.writer", "blockfs.launcher", "blockfs.casting", "blockfs.storage",
               "blockfs.locking", "blockfs.selection", "blockfs.progress", "blockfs.sample", "blockfs.threads",
               "blockfs.remote")),
    ("format", ("blockfs.format", "blockfs.records", "blockfs.marks", "blockfs.codec")),
    ("errors", ("blockfs.errors",)),
]


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the longest name that is ``module`` or a package holding it."""
    best, depth = -1, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            matches = module == name or (name != "blockfs" and module.startswith(name + "."))
            if matches and name.count(".") > depth:
                best, depth = index, name.count(".")
    assert best >= 0, f"{module}: in no layer of tests/test_layering.py; add it to LAYERS"
    return best


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[tuple[str, str | None]]:
    """(module, name) for every blockfs import in the file at ``path``; name None for a module imported whole
    (``from .a import b`` counts module a.b if it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {(a.name, None) for a in node.names if a.name.split(".")[0] == "blockfs"}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "blockfs":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = any((PACKAGE.parent / sub.replace(".", "/")).with_suffix(s).exists() for s in (".py", ""))
                found.add((sub, None) if is_module else (target, alias.name))
    return found


def imports(path: Path) -> set[str]:
    """The blockfs modules that the file at ``path`` imports."""
    return {module for module, _ in imported_names(path)}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every import that goes up a layer."""
    return sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                  for a, targets in graph.items() for b in targets if layer_of(b) < layer_of(a))


def package_graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_go_down_the_layers() -> None:
    graph = package_graph()
    assert len(graph) > 40 and graph["blockfs.cli.tif"] >= {"blockfs.convert.tiff", "blockfs.cli._support"}
    assert violations(graph) == []


def test_an_upward_import_is_reported() -> None:
    graph = package_graph()
    graph["blockfs.format"] = graph["blockfs.format"] | {"blockfs.directory"}
    graph["blockfs.ops.check"] = graph["blockfs.ops.check"] | {"blockfs.cli._support"}
    graph["blockfs.convert.tiff"] = graph["blockfs.convert.tiff"] | {"blockfs.pyramid.plan"}
    assert violations(graph) == ["blockfs.convert.tiff (convert) -> blockfs.pyramid.plan (pyramid)",
                                 "blockfs.format (format) -> blockfs.directory (tools)",
                                 "blockfs.ops.check (ops) -> blockfs.cli._support (tools)"]


def home(module: str) -> str:
    """The package a module belongs to: its feature package, or the package root for the engine."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or module in FEATURE_PACKAGES else "blockfs"


FEATURE_PACKAGES = {f"blockfs.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}


def test_no_private_name_is_imported_across_packages() -> None:
    crossings = sorted(f"{module_name(p)} imports {name} from {module}"
                       for p in sorted(PACKAGE.rglob("*.py")) for module, name in imported_names(p)
                       if (name or module.rpartition(".")[2]).startswith("_") and not name == "__version__"
                       and module.rpartition(".")[2] not in ("__init__", "__main__")
                       and home(module) != home(module_name(p)))
    assert crossings == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_no_import_cycle() -> None:
    """Counting imports inside functions, and a package's __init__ as a module of its own."""
    assert cycles(package_graph()) == []


def test_a_cycle_is_reported() -> None:
    graph = package_graph()
    graph["blockfs.errors"] = graph["blockfs.errors"] | {"blockfs.format"}
    assert any({"blockfs.errors", "blockfs.format"} <= set(group) for group in cycles(graph))
