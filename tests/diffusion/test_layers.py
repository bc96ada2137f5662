"""The diffusion layer is plain PyTorch (DESIGN.md): no module under ir_lightning/diffusion/ imports Lightning,
the methods or the networks."""

from __future__ import annotations

import ast
from pathlib import Path

import ir_lightning.diffusion

FORBIDDEN = ("lightning", "pytorch_lightning", "ir_lightning.methods", "ir_lightning.nets")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_diffusion_module_imports_lightning_methods_or_nets():
    root = Path(ir_lightning.diffusion.__file__).parent
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 10  # the package, deq/ included
    for path in files:
        bad = [name for name in imported_modules(path) if name.split(".")[0] in FORBIDDEN or name.startswith(FORBIDDEN)]
        assert not bad, f"{path.relative_to(root)} imports {bad}"
