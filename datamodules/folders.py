"""Image folders: the one listing of image files below a folder, the one pairing of clean (GT) and degraded
(LQ) files by file stem, and the folder mode of ``ir-lightning shards`` built on both.

- :func:`image_files_below` lists the image files (:data:`~datamodules.format.IMAGE_SUFFIXES`) of a folder;
  :func:`images_by_stem` groups them by stem, the relative path without extension (``a/0001``).
- :func:`pair_by_stem` matches GT and LQ files by stem (an LQ stem mapped to its GT stem by a rule, e.g.
  :func:`suffix_rule`) and reports what is left over on both sides; each caller words its own errors.
  ``ir-lightning shards`` (:func:`collect_pairs`), the data-set presets (``datamodules.presets``) and
  ``ir-lightning evaluate`` all pair with it.
- :func:`collect_pairs` matches two folders for the shard writer, :func:`pair_samples` reads the pairs as
  samples and :func:`split_keys` draws a reproducible validation split.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from datamodules.format import IMAGE_SUFFIXES, ShardError, ShardSample, sanitise_key

MAX_LISTED = 20
"""How many offending names an error message lists before it only gives the count."""


def listed(items: Sequence[str]) -> str:
    """The first :data:`MAX_LISTED` items, comma-separated, and how many more there are."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown if len(items) <= MAX_LISTED else f"{shown}, ... ({len(items) - MAX_LISTED} more)"


# ----------------------------------------------------------------------------------------------
# Listing


def image_files_below(root: Path, *, recursive: bool = True, hidden: bool = True) -> list[Path]:
    """Every image file in the folder ``root`` (and below it with ``recursive``), by suffix in any case,
    sorted. ``hidden=False`` leaves out files and folders whose names start with a dot. Symlinked files are
    listed (under the link's own path); symlinked folders are not entered."""
    root = Path(root)
    return [
        path
        for path in sorted(root.rglob("*") if recursive else root.iterdir())
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and (hidden or not _is_hidden(path.relative_to(root)))
    ]


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def images_by_stem(folder: Path, *, recursive: bool = True, hidden: bool = True) -> dict[str, list[Path]]:
    """The image files of :func:`image_files_below` grouped by stem (relative path without extension,
    ``a/0001``), stems and files in listing order; a stem with several files names a clash."""
    groups: dict[str, list[Path]] = {}
    for path in image_files_below(folder, recursive=recursive, hidden=hidden):
        groups.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return groups


def clashing(groups: Mapping[str, list[Path]]) -> list[Path]:
    """The files of :func:`images_by_stem` that share their stem with another, stem by stem."""
    return [path for paths in groups.values() if len(paths) > 1 for path in paths]


# ----------------------------------------------------------------------------------------------
# Pairing


@dataclass(frozen=True)
class StemPair:
    """A GT file and an LQ file whose stems match."""

    gt_stem: str
    lq_stem: str
    gt: Path
    lq: Path


@dataclass(frozen=True)
class StemPairing:
    """What :func:`pair_by_stem` found: the pairs (in GT order, then LQ order), the GT files no LQ file
    matches (GT order) and the LQ files without a GT file (LQ order)."""

    pairs: list[StemPair]
    lonely_gt: list[Path]
    lonely_lq: list[Path]


def same_stem(stem: str) -> str:
    """The pairing rule of equal names."""
    return stem


def suffix_rule(suffix: str) -> Callable[[str], str | None]:
    """The rule ``<GT stem><suffix>`` (DIV2K's ``0001x4``, BasicSR's ``filename_tmpl: '{}x4'``): an LQ stem
    without ``suffix`` at its end follows no rule (None)."""

    def gt_stem(lq_stem: str) -> str | None:
        return lq_stem[: len(lq_stem) - len(suffix)] if lq_stem.endswith(suffix) else None

    return gt_stem


def pair_by_stem(
    gt: Mapping[str, Path], lq: Mapping[str, Path], gt_stem: Callable[[str], str | None] = same_stem
) -> StemPairing:
    """Match LQ files to GT files by stem: ``gt_stem`` maps an LQ stem to the stem of its GT file, or to
    None when the name follows no rule. Several LQ files may share one GT file (SPA's frames)."""
    matched: dict[str, list[str]] = {}
    lonely_lq = []
    for stem, path in lq.items():
        target = gt_stem(stem)
        if target is None or target not in gt:
            lonely_lq.append(path)
        else:
            matched.setdefault(target, []).append(stem)
    pairs = [StemPair(target, stem, gt[target], lq[stem]) for target in gt for stem in matched.get(target, ())]
    lonely_gt = [path for stem, path in gt.items() if stem not in matched]
    return StemPairing(pairs, lonely_gt, lonely_lq)


# ----------------------------------------------------------------------------------------------
# The folder mode of the shard writer


@dataclass(frozen=True)
class ImagePair:
    """A clean image and, for a paired data set, its degraded counterpart, under one key."""

    key: str
    gt: Path
    lq: Path | None = None


def collect_pairs(
    gt_dir: Path, lq_dir: Path | None = None, lq_suffix: str = "", recursive: bool = False
) -> list[ImagePair]:
    """Match the images of ``gt_dir`` with those of ``lq_dir`` by relative path without extension.

    ``lq_suffix`` is stripped from LQ stems first (DIV2K names its x4 inputs ``0001x4.png``).
    Keys are the relative paths without extension, with ``/``, ``\\`` and ``.`` turned into ``_``.
    Hidden files and folders (names starting with a dot) are ignored. Raises :class:`ShardError`
    for a missing folder, no images, unmatched files on either side, or two files with one key.
    Returns the pairs sorted by key.
    """
    gt = _unique_images(Path(gt_dir), recursive)
    if lq_dir is None:
        pairs = [ImagePair(sanitise_key(stem), path) for stem, path in gt.items()]
    else:
        pairing = pair_by_stem(gt, _unique_images(Path(lq_dir), recursive), suffix_rule(lq_suffix))
        _check_matched(pairing, gt_dir, lq_dir, lq_suffix)
        pairs = [ImagePair(sanitise_key(pair.gt_stem), pair.gt, pair.lq) for pair in pairing.pairs]
    _check_unique_keys(pairs)
    return sorted(pairs, key=lambda pair: pair.key)


def _unique_images(folder: Path, recursive: bool) -> dict[str, Path]:
    """Each non-hidden image of ``folder`` by stem; :class:`ShardError` for no folder, no image or a clash."""
    if not folder.is_dir():
        raise ShardError(f"not a folder: {folder}")
    groups = images_by_stem(folder, recursive=recursive, hidden=False)
    if not groups:
        raise ShardError(
            f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}" + ("" if recursive else " (try --recursive)")
        )
    clashes = [str(path) for path in clashing(groups)]
    if clashes:
        raise ShardError(f"{len(clashes)} files share a name up to the extension: {listed(clashes)}")
    return {stem: paths[0] for stem, paths in groups.items()}


def _check_matched(pairing: StemPairing, gt_dir: Path, lq_dir: Path, suffix: str) -> None:
    """Raise :class:`ShardError` listing GT files without LQ partner and LQ files without GT partner."""
    lonely_gt = sorted(path.relative_to(gt_dir).as_posix() for path in pairing.lonely_gt)
    lonely_lq = sorted(path.relative_to(lq_dir).as_posix() for path in pairing.lonely_lq)
    problems = []
    if lonely_gt:
        problems.append(f"{len(lonely_gt)} GT images in {gt_dir} have no LQ partner: {listed(lonely_gt)}")
    if lonely_lq:
        problems.append(f"{len(lonely_lq)} LQ images in {lq_dir} have no GT partner: {listed(lonely_lq)}")
    if problems:
        raise ShardError("; ".join(problems) + f" (LQ stems are matched after removing lq_suffix={suffix!r})")


def _check_unique_keys(pairs: list[ImagePair]) -> None:
    by_key: dict[str, list[str]] = {}
    for pair in pairs:
        by_key.setdefault(pair.key, []).append(str(pair.gt))
    clashes = [f"{' and '.join(paths)} -> {key}" for key, paths in sorted(by_key.items()) if len(paths) > 1]
    if clashes:
        raise ShardError(f"{len(clashes)} keys are given by more than one file: {listed(clashes)}")


def pair_samples(pairs: Iterable[ImagePair]) -> Iterator[ShardSample]:
    """Read each pair's files as they are on disk (no re-encoding): ``gt.<ext>`` and ``lq.<ext>``,
    the extension as on disk in lower case."""
    for pair in pairs:
        files, sources = {}, {}
        for role, path in (("gt", pair.gt), ("lq", pair.lq)):
            if path is not None:
                name = role + path.suffix.lower()
                files[name], sources[name] = path.read_bytes(), str(path)
        yield ShardSample(pair.key, files, sources)


# ----------------------------------------------------------------------------------------------
# Train / validation split


def split_keys(
    keys: Iterable[str],
    val_count: int | None = None,
    val_fraction: float | None = None,
    val_keys: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[list[str], list[str]]:
    """Split ``keys`` into sorted (train, val) lists; at most one of the three options may be given.

    ``val_count`` / ``val_fraction`` take the first keys of the sorted keys shuffled with
    ``random.Random(seed)``, so the split depends only on the set of keys and the seed. A fraction
    is rounded to the nearest count (at least one). ``val_keys`` names the validation keys.
    """
    ordered = sorted(set(keys))
    if sum(option is not None for option in (val_count, val_fraction, val_keys)) > 1:
        raise ShardError("give at most one of val_count, val_fraction and val_keys")
    if val_keys is not None:
        val = _named_keys(ordered, val_keys)
    elif val_count is None and val_fraction is None:
        return ordered, []
    else:
        count = val_count if val_count is not None else _fraction_count(val_fraction, len(ordered))
        if not 0 <= count < len(ordered):
            raise ShardError(f"validation count {count} must be in [0, {len(ordered)}) for {len(ordered)} samples")
        shuffled = list(ordered)
        random.Random(seed).shuffle(shuffled)
        val = set(shuffled[:count])
    return [key for key in ordered if key not in val], [key for key in ordered if key in val]


def _fraction_count(fraction: float, total: int) -> int:
    if not 0.0 < fraction < 1.0:
        raise ShardError(f"val_fraction must be in (0, 1), got {fraction}")
    return max(1, round(fraction * total))


def _named_keys(ordered: list[str], val_keys: Sequence[str]) -> set[str]:
    unknown = sorted(set(val_keys) - set(ordered))
    if unknown:
        raise ShardError(f"{len(unknown)} validation keys are not in the data: {listed(unknown)}")
    if len(set(val_keys)) >= len(ordered):
        raise ShardError("val_keys name every sample; nothing is left to train on")
    return set(val_keys)
