"""The direction of imports inside blockfs: tools -> features -> facade -> store -> format -> errors.

Every module of the package is read with :mod:`ast` (imports inside functions count too) and placed in
one layer by the longest matching name below; a module may import its own layer and the layers under
it, never one above. A module that no layer names fails the test, so a new one must be placed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import blockfs

PACKAGE = Path(blockfs.__file__).parent

#: Highest first. The package root and the compatibility shims (old module paths) sit with the tools.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("tools", ("blockfs", "blockfs.__main__", "blockfs.cli", "blockfs.demo", "blockfs.pyramid.cli", "blockfs.serve.cli",
               "blockfs.interop.cli", "blockfs.check", "blockfs.repair", "blockfs.info", "blockfs.relocate",
               "blockfs.mv", "blockfs.rebase", "blockfs.blockfs2tif", "blockfs.blockfs2jp2k", "blockfs.blockfs2hdf5",
               "blockfs.tif2blockfs")),
    ("features", ("blockfs.pyramid", "blockfs.serve", "blockfs.interop", "blockfs.parallel", "blockfs.ops",
                  "blockfs.convert")),
    ("facade", ("blockfs.directory", "blockfs.volume", "blockfs.planes")),
    ("store", ("blockfs.store", "blockfs.writer", "blockfs.launcher", "blockfs.casting", "blockfs.storage", "blockfs.locking", "blockfs.selection",
               "blockfs.progress", "blockfs.sample", "blockfs.threads")),
    ("format", ("blockfs.format", "blockfs.records", "blockfs.marks", "blockfs.codec")),
    ("errors", ("blockfs.errors",)),
]

#: Upward imports made on purpose, each inside the one method that hands over to a feature.
DISPATCH = {
    ("blockfs.directory", "blockfs.parallel.collective"),  # Directory(...).create(comm=...), Directory.open(comm=...)
    ("blockfs.directory", "blockfs.interop.tools"),  # Directory.to_dask()
}


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


def imports(path: Path) -> set[str]:
    """The blockfs modules that the file at ``path`` imports (``from .a import b`` counts a.b if it is one)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "blockfs"}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if target.split(".")[0] != "blockfs":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = any((PACKAGE.parent / sub.replace(".", "/")).with_suffix(s).exists() for s in (".py", ""))
                found.add(sub if is_module else target)
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` for every import that goes up a layer and is not a known dispatch."""
    return sorted(f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
                  for a, targets in graph.items() for b in targets
                  if layer_of(b) < layer_of(a) and (a, b) not in DISPATCH)


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
    assert violations(graph) == ["blockfs.format (format) -> blockfs.directory (facade)",
                                 "blockfs.ops.check (features) -> blockfs.cli._support (tools)"]
