"""The package's import graph keeps DESIGN.md's layers, read from the source (AST, function-level imports
included; imports under `if TYPE_CHECKING:` never run and do not count):

- no module of `ir_lightning/diffusion/` or `ir_lightning/nets/` imports Lightning, directly or through the
  suite's modules it imports at module level (a package's `__init__` runs too); `diffusion/` imports no
  method and no network either (it takes a model callable);
- no method module (`ir_lightning/methods/<m>.py`) imports another method's module: `base` and `settings`
  are shared, not methods;
- `datamodules` never imports `ir_lightning.methods`, by any chain of imports;
- no import cycle among the module-level imports of `ir_lightning` and `datamodules`.

(tests/datamodules/test_layers.py checks, by importing them, that the write side of the shard format and
`ir-lightning shards` load without torch.)"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ir_lightning", "datamodules")
LIGHTNING = ("lightning", "pytorch_lightning")
SHARED_METHOD_MODULES = ("ir_lightning.methods.base", "ir_lightning.methods.settings", "ir_lightning.methods")


@dataclass
class Imports:
    """What one module imports: `top` at module level (what runs when it is imported), `late` inside
    functions; each a set of first-party module names, plus the third-party top-level names in `external`."""

    top: set[str] = field(default_factory=set)
    late: set[str] = field(default_factory=set)
    external_top: set[str] = field(default_factory=set)
    external_late: set[str] = field(default_factory=set)


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    """Every first-party module by name (the links `ir_lightning/recipes` and `ir_lightning/slurm` hold no code)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


def resolve(name: str, package: str, level: int) -> str:
    """The absolute module name of an import written in `package` (relative imports resolved)."""
    if level == 0:
        return name
    base = package.split(".")[: len(package.split(".")) - level + 1]
    return ".".join([*base, name] if name else base)


def _first_party(name: str) -> str | None:
    """`name` if it is a first-party module, else its longest first-party prefix (`pkg.attr` -> `pkg`), else None."""
    known = modules()
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _typing_only(tree: ast.AST) -> set[int]:
    return {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }


@cache
def imports_of(module: str) -> Imports:
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = _typing_only(tree)
    late = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for node in ast.walk(fn)
    }
    found = Imports()
    for node in ast.walk(tree):
        if id(node) in skipped or not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = resolve(node.module or "", package, node.level)
            # `from pkg import sub` imports the module pkg.sub when there is one, else a name of pkg
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base for alias in node.names]
        for name in names:
            first = _first_party(name)
            if first is None:
                (found.external_late if id(node) in late else found.external_top).add(name.split(".")[0])
            elif first != module:
                (found.late if id(node) in late else found.top).add(first)
    return found


def runs_on_import(module: str) -> set[str]:
    """The first-party modules whose module-level code runs when `module` is imported: it, its parent packages,
    and (recursively) what their module-level imports name, with those modules' parent packages."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        chain = name.split(".")
        for end in range(1, len(chain) + 1):
            part = ".".join(chain[:end])
            if part in modules() and part not in seen:
                seen.add(part)
                todo.extend(imports_of(part).top)
    return seen


def lightning_importers(module: str) -> list[str]:
    """The modules that import Lightning when `module` is imported: `module` itself (at any level: its functions
    run with it) or a suite module its import runs (at module level)."""
    direct = imports_of(module)
    culprits = [module] if (direct.external_top | direct.external_late) & set(LIGHTNING) else []
    reached = set().union(*(runs_on_import(name) for name in {module, *direct.late}))
    return culprits + sorted(name for name in reached - {module} if imports_of(name).external_top & set(LIGHTNING))


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def test_the_graph_sees_every_module_and_its_imports():
    assert {"ir_lightning.cli", "ir_lightning.diffusion.deq.solve", "datamodules.stream"} <= set(modules())
    assert "ir_lightning.methods.base" in imports_of("ir_lightning.methods.sr3").top
    assert "lightning" in imports_of("ir_lightning.methods.base").external_top
    assert "ir_lightning.cli" in imports_of("ir_lightning.entry").late  # the late import of the training commands
    assert "ir_lightning.methods.base" not in imports_of("ir_lightning.inference.loading").top  # a type-checking import


def test_diffusion_and_nets_import_no_lightning_and_diffusion_no_method_or_network():
    layers = [
        name
        for name in modules()
        if in_package(name, "ir_lightning.diffusion") or in_package(name, "ir_lightning.nets")
    ]
    assert len(layers) >= 15
    bad = {name: found for name in layers if (found := lightning_importers(name))}
    assert not bad, f"modules that import Lightning, with the module that does: {bad}"
    for name in (name for name in layers if in_package(name, "ir_lightning.diffusion")):
        reached = runs_on_import(name) | imports_of(name).late
        named = sorted(
            m for m in reached if in_package(m, "ir_lightning.methods") or in_package(m, "ir_lightning.nets")
        )
        assert not named, f"{name} imports {named}"


def test_no_method_imports_another_methods_module():
    methods = [
        name for name in modules() if in_package(name, "ir_lightning.methods") and name not in SHARED_METHOD_MODULES
    ]
    assert len(methods) >= 5
    for name in methods:
        found = imports_of(name)
        others = sorted(m for m in found.top | found.late if m in methods and m != name)
        assert not others, f"{name} imports the method module(s) {others}"


def test_datamodules_never_import_a_method():
    for start in (name for name in modules() if in_package(name, "datamodules")):
        seen, todo = set(), [start]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            assert not in_package(name, "ir_lightning.methods"), f"{start} imports {name}"
            found = imports_of(name)
            todo.extend(found.top | found.late)


def test_no_import_cycle_among_module_level_imports():
    graph = {name: imports_of(name).top for name in modules()}
    cycles = strongly_connected(graph)
    assert not cycles, f"module-level import cycles: {cycles}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of `graph` (its strongly connected components of more than one node, or with a self-edge)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


ALIASES = {
    "ir_lightning.callbacks": "ir_lightning.training.callbacks",
    "ir_lightning.methods.lr": "ir_lightning.training.optim",
    "ir_lightning.preemption": "ir_lightning.training.preemption",
    "ir_lightning.checkpoint_io": "ir_lightning.training.checkpoint_io",
    "ir_lightning.run_lock": "ir_lightning.training.run_lock",
}
"""Modules that moved (issue 17) whose classes recipes, users' YAML or checkpoints name: old path -> new home."""


def test_moved_classes_keep_their_old_class_paths():
    import importlib

    from ir_lightning.class_paths import allowed_class

    for old, new in ALIASES.items():
        alias, home = importlib.import_module(old), importlib.import_module(new)
        assert alias.__doc__.startswith("Alias kept for class paths"), old
        classes = [name for name in alias.__all__ if isinstance(getattr(alias, name), type)]
        assert classes and all(getattr(alias, name) is getattr(home, name, getattr(alias, name)) for name in classes), (
            old
        )
    for name in ("StepDecay", "MultiStep", "CosineRestarts", "Constant"):  # checkpoints name the schedules
        assert (
            allowed_class(f"ir_lightning.methods.lr.{name}")
            is allowed_class(f"ir_lightning.training.optim.{name}")
            is not None
        )
