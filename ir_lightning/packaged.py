"""The recipes and SLURM batch scripts installed with the package, and `ir-lightning recipes`.

`recipes/` and `slurm/` live at the top of the checkout; `ir_lightning/recipes` and `ir_lightning/slurm` are
links to them, so a wheel (and a non-editable `pip install .`) carries copies inside the package and every
command finds them wherever the package is installed. A config on the command line may name a recipe
instead of a file: `-c sr3_x4` (or `-c demo/sr3_x4_cpu`, `-c recipes/sr3_x4.yaml`) reads the installed
recipe when no such file exists where the command runs; a file that exists always wins.

    ir-lightning recipes                 # every installed recipe, with its first comment line
    ir-lightning fit -c sr3_x4 -c demo/sr3_x4_cpu --data.init_args.train_shards=...
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
RECIPES = PACKAGE / "recipes"
"""The installed recipes: one YAML per (method, task), CPU overlays under demo/."""
BASE_RECIPE = RECIPES / "base.yaml"
"""The suite's shared settings (trainer defaults, the W&B logger, the standard callbacks), which the CLI reads
before the -c files of every fit, validate, test and predict: a recipe holds only what differs."""
SLURM = PACKAGE / "slurm"
"""The installed batch scripts: train.sbatch, array.sbatch."""
CONFIG_FLAGS = ("-c", "--config")


def recipe_names() -> list[str]:
    """Names of the installed recipes, relative to the recipe folder, without `.yaml` (`sr3_x4`, `demo/...`);
    not the base recipe, which every command reads first and nobody runs (`recipe_path("base")` finds it)."""
    paths = (path for path in RECIPES.rglob("*.yaml") if path != BASE_RECIPE)
    return sorted(path.relative_to(RECIPES).with_suffix("").as_posix() for path in paths)


def recipe_path(name: str) -> Path | None:
    """The installed recipe a config argument names (`sr3_x4`, `sr3_x4.yaml`, `recipes/sr3_x4.yaml`), or None."""
    stem = name.removeprefix("recipes/").removesuffix(".yaml")
    if not stem or Path(stem).is_absolute() or ".." in Path(stem).parts:  # only names inside the recipe folder
        return None
    candidate = RECIPES / f"{stem}.yaml"
    return candidate if candidate.is_file() else None


def config_arguments(argv: list[str]) -> Iterator[tuple[int, str, str]]:
    """(index, prefix, config) of every config on a command line: `-c F`, `--config F` (the word after the
    flag, prefix "") and `--config=F`, `-c=F`, `-cF` (the same word, prefix `--config=`, `-c=`, `-c`), as
    argparse reads them."""
    for index, word in enumerate(argv):
        if word in CONFIG_FLAGS and index + 1 < len(argv):
            yield index + 1, "", argv[index + 1]
        elif word.startswith(("--config=", "-c=")):
            prefix, value = word.split("=", 1)
            yield index, prefix + "=", value
        elif word.startswith("-c") and len(word) > 2 and not word.startswith("--"):
            yield index, "-c", word[2:]


def resolve_configs(argv: list[str]) -> list[str]:
    """The command line with every config that is not a file here but names an installed recipe replaced by
    that recipe's path (`-c NAME`, `--config NAME`, `--config=NAME`)."""
    resolved = list(argv)
    for index, prefix, config in config_arguments(argv):
        resolved[index] = prefix + _resolved(config)
    return resolved


def _resolved(name: str) -> str:
    if Path(name).exists():
        return name
    recipe = recipe_path(name)
    return str(recipe) if recipe is not None else name


def summary(path: Path) -> str:
    """The recipe's first comment line (what it reproduces), without the leading '#'."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ir-lightning recipes",
        description="List the recipes installed with the package. Give a name to `-c` (`ir-lightning fit -c "
        "sr3_x4 -c demo/sr3_x4_cpu ...`) to use one, or --path NAME to print its file (to copy and edit).",
    )
    parser.add_argument("--path", metavar="NAME", help="print the file of this recipe and exit")
    args = parser.parse_args(argv)
    if args.path is not None:
        recipe = recipe_path(args.path)
        if recipe is None:
            parser.error(f"no installed recipe {args.path!r}; the recipes are: {', '.join(recipe_names())}")
        print(recipe)
        return 0
    names = recipe_names()
    width = max(map(len, names), default=0)
    print(f"{len(names)} recipes in {RECIPES}:")
    for name in names:
        print(f"  {name:<{width}}  {summary(RECIPES / f'{name}.yaml')}")
    print("and, read before each of them by fit, validate, test and predict:")
    print(f"  {BASE_RECIPE.stem:<{width}}  {summary(BASE_RECIPE)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
