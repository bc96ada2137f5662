"""The data layer's imports (DESIGN.md, "Layers"): ``datamodules`` never imports a method, the write side of
the shard format and ``ir-lightning shards`` import no torch, and no module of ``datamodules`` or
``ir_lightning.commands`` is part of an import cycle (function-level imports count: a late import only
hides a circle)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("datamodules", "ir_lightning")
"""First-party top-level packages: the import graph is followed inside them."""

WRITE_SIDE = (
    "datamodules.format",
    "datamodules.folders",
    "datamodules.writer",
    "datamodules.presets",
    "ir_lightning.commands.shards",
)
"""Modules that ``ir-lightning shards`` (and its --help) loads: they must start without torch."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(package: str) -> list[str]:
    return sorted(module_name(path) for path in (REPO / package.replace(".", "/")).rglob("*.py"))


def imports_of(module: str) -> set[str]:
    """First-party modules that ``module`` imports, at its top or inside a function (not for type checking)."""
    path = REPO / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = REPO / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    known = set(modules_of("datamodules")) | set(modules_of("ir_lightning"))
    return {name for name in found if name in known and name != module}


def test_no_module_of_the_data_layer_or_the_commands_is_in_an_import_cycle():
    start = modules_of("datamodules") + modules_of("ir_lightning.commands")
    graph: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        module = todo.pop()
        if module not in graph:
            graph[module] = imports_of(module)
            todo.extend(graph[module])

    def reaches(source: str, target: str) -> bool:
        seen, stack = set(), [source]
        while stack:
            node = stack.pop()
            if node == target:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    cycles = [(module, imported) for module in start for imported in graph[module] if reaches(imported, module)]
    assert not cycles, f"modules that import a module importing them back: {cycles}"


def test_datamodules_imports_no_method_and_the_write_side_no_torch():
    every = modules_of("datamodules") + modules_of("ir_lightning.commands")
    code = (
        "import importlib, sys\n"
        f"for name in {WRITE_SIDE!r}:\n    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules)\n"
        f"for name in {every!r}:\n    importlib.import_module(name)\n"
        "methods = sorted(m for m in sys.modules if m.startswith(('ir_lightning.methods', 'ir_lightning.nets')))\n"
        "print(heavy, methods)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=REPO
    )
    assert done.stdout.split("\n")[0] == "[] []", done.stdout + done.stderr[-2000:]


def test_the_data_modules_keep_their_class_paths():
    """Recipes name ``datamodules.ShardDataModule`` / ``datamodules.AdaptationDataModule``; configs and
    checkpoints of earlier runs may name ``datamodules.shards.ShardDataModule``."""
    import datamodules
    from datamodules.adaptation import AdaptationDataModule
    from datamodules.shard_datamodule import ShardDataModule
    from datamodules.shards import ShardDataModule as former

    assert datamodules.ShardDataModule is ShardDataModule is former
    assert datamodules.AdaptationDataModule is AdaptationDataModule
    assert sorted(datamodules.__all__) == ["AdaptationDataModule", "ShardDataModule"]
