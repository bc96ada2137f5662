"""The `ir-lightning` (and `lightning`, `python -m ir_lightning`) entry point.

`--version` and the subcommands (`shards`, `photos`, `demo`, `export`, `import`, `restore`, `evaluate`, `sweep`, `recipes`) are
dispatched here without importing Lightning, so those that do not need it start at once; `fit`, `validate`,
`test` and `predict` go to the LightningCLI in `ir_lightning.cli`.
"""

from __future__ import annotations

import os
import sys
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

SUBCOMMANDS = {
    "shards": "ir_lightning.commands.shards",
    "photos": "ir_lightning.commands.photos",
    "demo": "ir_lightning.commands.demo",
    "export": "ir_lightning.commands.export",
    "import": "ir_lightning.commands.import_",
    "restore": "ir_lightning.commands.restore",
    "evaluate": "ir_lightning.commands.evaluate",
    "sweep": "ir_lightning.commands.sweep",
    "recipes": "ir_lightning.packaged",
}
VERSION_FLAGS = ("--version", "-V")


def installed_version() -> str:
    """The installed distribution's version (the package's own when run from a bare source tree)."""
    try:
        return version("ir-lightning")
    except PackageNotFoundError:
        from ir_lightning import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console scripts (see the module docstring)."""
    words = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("WANDB_MODE", "offline")  # no account, no network, unless the user asks for it
    if words[:1] and words[0] in VERSION_FLAGS:
        print(f"ir-lightning {installed_version()}")
        return 0
    if words and words[0] in SUBCOMMANDS:
        return int(import_module(SUBCOMMANDS[words[0]]).main(words[1:]) or 0)
    from ir_lightning.cli import run_lightning  # imports Lightning: only the training commands need it

    return run_lightning(words, from_sys_argv=argv is None)


if __name__ == "__main__":
    raise SystemExit(main())
