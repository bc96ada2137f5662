"""Presets of ``ir-lightning shards``: well-known data sets read straight from their download folder.

``ir-lightning shards --preset gopro --root /data/GOPRO_Large --out shards/gopro`` writes
``train-*.tar`` and ``test-*.tar`` without any glue code. Each :class:`Preset` knows one data
set's folder tree as its official archive unpacks (written out in :attr:`Preset.layout`, which
error messages and docs/data.md show), which folders hold which split, where the clean (GT) and
degraded (LQ) images live and how the two are matched: by equal names, by a name rule (SIDD's
``_NOISY_`` / ``_GT_``, SPA's frame patches sharing one clean patch) or by list files (RealBlur).

A preset yields :class:`PresetSample` records: a key, the GT path, the LQ path (None for clean-only
sets such as DIV2K or FFHQ), the split and, for ISTD, the shadow mask. They are read with
:func:`datamodules.folders.pair_samples` and written with :func:`datamodules.writer.write_shards`,
the same code as the folder mode (``--gt``/``--lq``), so a shard from a preset is like any other; files
are listed and matched by :mod:`datamodules.folders` too. The command line is ``ir_lightning.commands.shards``.

Split names: ``train``; ``val`` for a data set's own validation set (DIV2K, DF2K, FFHQ); ``test``
for its test set (GoPro, LOL, ISTD, RealBlur, SPA); ``test-<name>`` where one download holds several
test sets (Rain13K). ``--val-count`` / ``--val-fraction`` / ``--val-keys`` draw a ``val`` split from
``train`` for a preset that has none (Flickr2K, SIDD, or GoPro if the test set must stay unseen).

Keys come from the relative path (sequence or scene folder plus file stem), so they are unique
and the same on every run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from datamodules.folders import (
    ImagePair,
    clashing,
    images_by_stem,
    listed,
    pair_by_stem,
    pair_samples,
    same_stem,
    split_keys,
)
from datamodules.format import IMAGE_SUFFIXES, ShardError, ShardSample, check_key, sanitise_key

FFHQ_TRAIN_IMAGES = 60_000
"""FFHQ's official split: images 00000-59999 are for training, 60000-69999 for validation."""

RAIN13K_TEST_SETS: tuple[str, ...] = ("Rain100H", "Rain100L", "Test100", "Test1200", "Test2800")
"""The five test sets shipped with Rain13K (MPRNet / Restormer ``Datasets/test``), in the papers' order."""

SPLIT_ORDER: tuple[str, ...] = ("train", "val", "test")
"""Order in which splits are written and reported; ``test-<name>`` splits follow, sorted."""


class PresetError(ShardError):
    """A data set folder that does not look like the preset's layout (reported without a traceback)."""


@dataclass(frozen=True)
class PresetSample:
    """One sample a preset found: its key, clean image, degraded image (None for clean-only data
    sets), split name and optional single-channel mask on the GT grid (ISTD's shadow masks)."""

    key: str
    gt: Path
    lq: Path | None
    split: str
    mask: Path | None = None


@dataclass(frozen=True)
class Preset:
    """A known data set layout: ``collect`` turns the folder given as ``--root`` into samples.

    ``layout`` is the expected tree below ``--root`` (shown in errors and in docs/data.md) and
    ``source`` says where that layout is documented.
    """

    name: str
    title: str
    layout: str
    source: str
    collect: Callable[[_Root], list[PresetSample]]
    example_root: str


# ----------------------------------------------------------------------------------------------
# Looking at a data set folder


@dataclass(frozen=True)
class _Root:
    """The ``--root`` folder as seen by one preset: every missing piece is reported with the
    preset's name, the path looked for and the tree the preset expects."""

    preset: Preset
    path: Path

    def missing(self, looked_for: str) -> PresetError:
        return PresetError(
            f"preset {self.preset.name!r}: {looked_for} not found under --root {self.path}; "
            f"{self.preset.title} is expected to look like this below --root:\n{_indent(self.preset.layout)}"
        )

    def folder(self, *candidates: str) -> Path:
        """The first of the relative folder ``candidates`` that exists (a download may nest one level)."""
        for relative in candidates:
            if (self.path / relative).is_dir():
                return self.path / relative
        raise self.missing(" or ".join(f"folder {self.path / relative}" for relative in candidates))

    def file(self, relative: str) -> Path:
        if not (self.path / relative).is_file():
            raise self.missing(f"file {self.path / relative}")
        return self.path / relative

    def subfolders(self, folder: Path, what: str) -> list[Path]:
        """Sorted non-hidden sub-folders of ``folder`` (sequences, scenes); at least one."""
        found = sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
        if not found:
            raise self.missing(f"any {what} folder in {folder}")
        return found

    def images(self, folder: Path, recursive: bool = False) -> dict[str, Path]:
        """Map relative path without extension (``a/0001``) to path for the images in ``folder``,
        sorted, hidden names skipped. Raises if there are none or two share a name up to the extension."""
        groups = images_by_stem(folder, recursive=recursive, hidden=False)
        if not groups:
            raise self.missing(f"images ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
        clashes = [str(path) for path in clashing(groups)]
        if clashes:
            raise PresetError(
                f"preset {self.preset.name!r}: {len(clashes)} files share a name up to the extension: {listed(clashes)}"
            )
        return {stem: paths[0] for stem, paths in groups.items()}

    def pair(
        self,
        gt_dir: Path,
        lq_dir: Path,
        gt_name: Callable[[str], str | None] = same_stem,
        rule: str = "same name",
        roles: tuple[str, str] = ("GT", "LQ"),
        recursive: bool = False,
    ) -> list[tuple[str, Path, Path]]:
        """``(lq stem, gt path, lq path)`` for each image of ``lq_dir`` (:func:`datamodules.folders.pair_by_stem`).

        ``gt_name`` maps an LQ stem (relative path without extension) to the stem of its GT image,
        or to None when the name does not follow the ``rule``. Several LQ images may share a GT
        (SPA). Raises naming every LQ image without a GT and every GT image that no LQ image uses.
        """
        pairing = pair_by_stem(self.images(gt_dir, recursive), self.images(lq_dir, recursive), gt_name)
        lonely_lq = [path.relative_to(lq_dir).as_posix() for path in pairing.lonely_lq]
        lonely_gt = [path.relative_to(gt_dir).as_posix() for path in pairing.lonely_gt]
        problems = []
        gt_role, lq_role = roles
        if lonely_lq:
            problems.append(
                f"{len(lonely_lq)} {lq_role} images in {lq_dir} have no {gt_role} partner in {gt_dir}: "
                f"{listed(lonely_lq)}"
            )
        if lonely_gt:
            problems.append(
                f"{len(lonely_gt)} {gt_role} images in {gt_dir} have no {lq_role} partner in {lq_dir}: "
                f"{listed(lonely_gt)}"
            )
        if problems:
            raise PresetError(f"preset {self.preset.name!r}: " + "; ".join(problems) + f" (matched by {rule})")
        return [(pair.lq_stem, pair.gt, pair.lq) for pair in pairing.pairs]


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())


def _clean_only(root: _Root, candidates: Iterable[str], split: str, prefix: str = "") -> list[PresetSample]:
    """Clean-only samples from one folder of images, keyed by ``prefix`` plus the file stem."""
    folder = root.folder(*candidates)
    return [PresetSample(prefix + sanitise_key(stem), path, None, split) for stem, path in root.images(folder).items()]


def _same_name_pairs(root: _Root, gt_rel: str, lq_rel: str, split: str) -> list[PresetSample]:
    """Pairs of two folders whose images have equal names, keyed by the file stem."""
    pairs = root.pair(root.folder(gt_rel), root.folder(lq_rel))
    return [PresetSample(sanitise_key(stem), gt, lq, split) for stem, gt, lq in pairs]


# ----------------------------------------------------------------------------------------------
# The data sets


def _div2k(root: _Root) -> list[PresetSample]:
    return _clean_only(root, ["DIV2K_train_HR"], "train") + _clean_only(root, ["DIV2K_valid_HR"], "val")


def _flickr2k(root: _Root) -> list[PresetSample]:
    return _clean_only(root, ["Flickr2K_HR"], "train")


def _df2k(root: _Root) -> list[PresetSample]:
    # Flickr2K.tar unpacks to Flickr2K/Flickr2K_HR; accept that folder placed beside DIV2K's or nested.
    return (
        _clean_only(root, ["DIV2K_train_HR"], "train", prefix="div2k_")
        + _clean_only(root, ["Flickr2K_HR", "Flickr2K/Flickr2K_HR"], "train", prefix="flickr2k_")
        + _clean_only(root, ["DIV2K_valid_HR"], "val", prefix="div2k_")
    )


def _ffhq_images(folder_name: str) -> Callable[[_Root], list[PresetSample]]:
    """FFHQ from ``folder_name`` (``images1024x1024`` or ``thumbnails128x128``), split by image number."""

    def collect(root: _Root) -> list[PresetSample]:
        folder = root.folder(folder_name)
        samples = []
        for path in root.images(folder, recursive=True).values():  # 00000/00000.png ... 69000/69999.png
            if not path.stem.isdigit():
                raise PresetError(
                    f"preset {root.preset.name!r}: {path} is not named by an FFHQ image number (00000.png)"
                )
            split = "train" if int(path.stem) < FFHQ_TRAIN_IMAGES else "val"
            # the key is the image number: unique, and the bucket folder (00000/) adds nothing
            samples.append(PresetSample(path.stem, path, None, split))
        return samples

    return collect


def _gopro(root: _Root) -> list[PresetSample]:
    # LQ is blur/; blur_gamma/ (the same frames averaged after gamma correction) is ignored.
    samples = []
    for split in ("train", "test"):
        for sequence in root.subfolders(root.folder(split), f"sequence (GOPRxxxx_xx_xx) in {split}"):
            relative = f"{split}/{sequence.name}"
            pairs = root.pair(root.folder(f"{relative}/sharp"), root.folder(f"{relative}/blur"))
            samples += [PresetSample(f"{sequence.name}_{stem}", gt, lq, split) for stem, gt, lq in pairs]
    return samples


def _rain13k(root: _Root) -> list[PresetSample]:
    samples = _same_name_pairs(root, "train/Rain13K/target", "train/Rain13K/input", "train")
    for test_set in RAIN13K_TEST_SETS:
        relative = f"test/{test_set}"
        samples += _same_name_pairs(root, f"{relative}/target", f"{relative}/input", f"test-{test_set.lower()}")
    return samples


_SIDD_NOISY, _SIDD_GT = "_NOISY_", "_GT_"


def _sidd(root: _Root) -> list[PresetSample]:
    # Each scene-instance folder holds <id>_GT_SRGB_010.PNG / <id>_NOISY_SRGB_010.PNG and the same for 011.
    samples = []
    for scene in root.subfolders(root.folder("Data"), "scene-instance"):
        images = root.images(scene)
        lq_stems = [stem for stem in images if _SIDD_NOISY in stem]
        gt_stems = {stem for stem in images if _SIDD_GT in stem}
        lonely_lq = [images[s].name for s in lq_stems if s.replace(_SIDD_NOISY, _SIDD_GT) not in gt_stems]
        lonely_gt = [images[s].name for s in sorted(gt_stems - {s.replace(_SIDD_NOISY, _SIDD_GT) for s in lq_stems})]
        if lonely_lq or lonely_gt or not lq_stems:
            raise PresetError(
                f"preset {root.preset.name!r}: in {scene}, noisy images without GT: {listed(lonely_lq) or 'none'}; "
                f"GT images without noisy image: {listed(lonely_gt) or 'none'} "
                f"(a noisy *{_SIDD_NOISY}* image is matched to the *{_SIDD_GT}* image of the same name)"
            )
        for stem in lq_stems:
            capture = stem.rsplit("_", 1)[-1]  # 010 or 011: the two captures of a scene instance
            gt = images[stem.replace(_SIDD_NOISY, _SIDD_GT)]
            samples.append(PresetSample(sanitise_key(f"{scene.name}_{capture}"), gt, images[stem], "train"))
    return samples


def _lol(root: _Root) -> list[PresetSample]:
    return _same_name_pairs(root, "our485/high", "our485/low", "train") + _same_name_pairs(
        root, "eval15/high", "eval15/low", "test"
    )


def _istd(root: _Root) -> list[PresetSample]:
    # A = shadow image (LQ), B = shadow mask, C = shadow-free image (GT), all under one name.
    samples = []
    for split in ("train", "test"):
        shadow, mask, free = (root.folder(f"{split}/{split}_{letter}") for letter in "ABC")
        pairs = root.pair(free, shadow, roles=(f"shadow-free ({split}_C)", f"shadow ({split}_A)"))
        masks = root.pair(free, mask, roles=(f"shadow-free ({split}_C)", f"mask ({split}_B)"))
        mask_of = {gt: path for _, gt, path in masks}
        samples += [PresetSample(sanitise_key(stem), gt, lq, split, mask_of[gt]) for stem, gt, lq in pairs]
    return samples


_REALBLUR_FOLDERS = {
    "J": "RealBlur-J_ECC_IMCORR_centroid_itensity_ref",  # sic: 'itensity' is the official spelling
    "R": "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref",
}


def _realblur(variant: str) -> Callable[[_Root], list[PresetSample]]:
    """RealBlur-J or -R, split by the official list files: one ``<gt path> <blur path>`` pair a line."""

    def collect(root: _Root) -> list[PresetSample]:
        root.folder(_REALBLUR_FOLDERS[variant])
        samples = []
        for split in ("train", "test"):
            listing = root.file(f"RealBlur_{variant}_{split}_list.txt")
            for number, line in enumerate(listing.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.split()
                where = f"{listing}, line {number}"
                if len(fields) < 2:
                    raise PresetError(
                        f"preset {root.preset.name!r}: {where}: expected '<gt path> <blur path>', got {line!r}"
                    )
                gt, lq = root.path / fields[0], root.path / fields[1]
                for role, path in (("GT", gt), ("blurred (LQ)", lq)):
                    if not path.is_file():
                        raise PresetError(
                            f"preset {root.preset.name!r}: {where} names the {role} image {path}, which does not exist"
                        )
                scene = gt.parent.parent.name  # <folder>/scene001/gt/gt_1.png
                samples.append(PresetSample(sanitise_key(f"{scene}_{gt.stem}"), gt, lq, split))
        return samples

    return collect


_SPA_PATCH = re.compile(r"(?P<video>[^/]+)/(?P<frame>[^/]+)/(?P=frame)_(?P<position>[^/]+)")
"""An SPA training patch: ``<video>/<video>-<frame>/<video>-<frame>_<x>_<y>``."""


def _spa_train_gt(lq_stem: str) -> str | None:
    """``000/000-5/000-5_3_4`` (rainy patch of frame 5) -> ``000/000_3_4`` (the clean patch of that place)."""
    match = _SPA_PATCH.fullmatch(lq_stem)
    if match is None:
        return None
    return f"{match['video']}/{match['frame'].split('-')[0]}_{match['position']}"


def _spa(root: _Root) -> list[PresetSample]:
    train = root.pair(
        root.folder("real_world_gt"),
        root.folder("real_world"),
        _spa_train_gt,
        rule="real_world/V/V-F/V-F_X_Y -> real_world_gt/V/V_X_Y",
        recursive=True,
    )
    test = root.pair(
        root.folder("real_test_1000/gt"),
        root.folder("real_test_1000/rain"),
        lambda stem: f"{stem}gt",
        rule="rain/N.png -> gt/Ngt.png",
    )
    return [PresetSample(sanitise_key(Path(stem).name), gt, lq, "train") for stem, gt, lq in train] + [
        PresetSample(sanitise_key(stem), gt, lq, "test") for stem, gt, lq in test
    ]


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "div2k",
            "DIV2K (HR images only)",
            "DIV2K_train_HR/0001.png ... 0800.png      -> train\nDIV2K_valid_HR/0801.png ... 0900.png      -> val",
            "data.vision.ee.ethz.ch/cvl/DIV2K: DIV2K_train_HR.zip, DIV2K_valid_HR.zip",
            _div2k,
            "/data/DIV2K",
        ),
        Preset(
            "flickr2k",
            "Flickr2K (HR images only)",
            "Flickr2K_HR/000001.png ... 002650.png     -> train (no official val)",
            "Flickr2K.tar of EDSR (SNU CVLab) unpacks to Flickr2K/{Flickr2K_HR,Flickr2K_LR_bicubic,...}",
            _flickr2k,
            "/data/Flickr2K",
        ),
        Preset(
            "df2k",
            "DF2K = DIV2K train HR + Flickr2K HR",
            "DIV2K_train_HR/0001.png ...               -> train (keys div2k_0001, ...)\n"
            "Flickr2K_HR/000001.png ...                -> train (keys flickr2k_000001, ...)\n"
            "  (or Flickr2K/Flickr2K_HR/, as Flickr2K.tar unpacks)\n"
            "DIV2K_valid_HR/0801.png ...               -> val",
            "DIV2K and Flickr2K downloads side by side (BasicSR / Real-ESRGAN use DIV2K+Flickr2K HR as DF2K)",
            _df2k,
            "/data/DF2K",
        ),
        Preset(
            "ffhq",
            "FFHQ 1024x1024 (clean images only)",
            "images1024x1024/00000/00000.png ... 69000/69999.png\n"
            "  00000-59999 -> train, 60000-69999 -> val (the official split)",
            "github.com/NVlabs/ffhq-dataset README (folders of 1000; first 60,000 for training)",
            _ffhq_images("images1024x1024"),
            "/data/ffhq-dataset",
        ),
        Preset(
            "ffhq-thumbnails",
            "FFHQ 128x128 thumbnails (clean images only)",
            "thumbnails128x128/00000/00000.png ... 69000/69999.png\n"
            "  00000-59999 -> train, 60000-69999 -> val (the official split)",
            "github.com/NVlabs/ffhq-dataset README",
            _ffhq_images("thumbnails128x128"),
            "/data/ffhq-dataset",
        ),
        Preset(
            "gopro",
            "GoPro (GOPRO_Large)",
            "train/GOPR0372_07_00/blur/000047.png      LQ\n"
            "train/GOPR0372_07_00/sharp/000047.png     GT  (blur_gamma/ is ignored)\n"
            "train/<sequence>/...                      -> train (keys GOPR0372_07_00_000047, ...)\n"
            "test/<sequence>/{blur,sharp}/...          -> test",
            "GOPRO_Large.zip of Nah et al. (SNU CVLab, DeepDeblur); the tree MPRNet/Restormer start from",
            _gopro,
            "/data/GOPRO_Large",
        ),
        Preset(
            "rain13k",
            "Rain13K and its five test sets",
            "train/Rain13K/input/<name>                LQ  -> train\n"
            "train/Rain13K/target/<name>               GT\n"
            "test/{Rain100H,Rain100L,Test100,Test1200,Test2800}/{input,target}/<name>\n"
            "                                          -> test-rain100h, test-rain100l, ...",
            "MPRNet / Restormer Deraining/Datasets README (train.zip, test.zip)",
            _rain13k,
            "/data/Deraining/Datasets",
        ),
        Preset(
            "sidd",
            "SIDD-Medium sRGB",
            "Data/0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_010.PNG   LQ\n"
            "Data/0001_001_S6_00100_00060_3200_L/0001_GT_SRGB_010.PNG      GT\n"
            "  (and _011) -> train (keys 0001_001_S6_00100_00060_3200_L_010, ...; no val: the\n"
            "  official validation blocks are .mat files, not read here)",
            "SIDD_Medium_Srgb.zip, _ReadMe_sRGB.txt (York University, Abdelhamed et al.)",
            _sidd,
            "/data/SIDD_Medium_Srgb",
        ),
        Preset(
            "lol",
            "LOL (LOw-Light)",
            "our485/low/<n>.png                        LQ  -> train\n"
            "our485/high/<n>.png                       GT\n"
            "eval15/{low,high}/<n>.png                 -> test",
            "LOLdataset.zip of Wei et al. (RetinexNet, BMVC 2018)",
            _lol,
            "/data/LOLdataset",
        ),
        Preset(
            "istd",
            "ISTD (shadow removal)",
            "train/train_A/<name>.png                  shadow image (LQ)  -> train\n"
            "train/train_B/<name>.png                  shadow mask (mask.png)\n"
            "train/train_C/<name>.png                  shadow-free image (GT)\n"
            "test/test_{A,B,C}/<name>.png              -> test",
            "ISTD_Dataset of Wang et al. (ST-CGAN, github.com/DeepInsight-PCALab/ST-CGAN)",
            _istd,
            "/data/ISTD_Dataset",
        ),
        Preset(
            "realblur-j",
            "RealBlur-J",
            "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene001/blur/blur_1.png   LQ\n"
            "RealBlur-J_ECC_IMCORR_centroid_itensity_ref/scene001/gt/gt_1.png       GT\n"
            "RealBlur_J_train_list.txt                 '<gt path> <blur path>' a line -> train\n"
            "RealBlur_J_test_list.txt                  -> test (keys scene001_gt_1, ...)",
            "RealBlur.tar.gz of Rim et al. (github.com/rimchang/RealBlur) with its list files",
            _realblur("J"),
            "/data/RealBlur",
        ),
        Preset(
            "realblur-r",
            "RealBlur-R",
            "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref/scene001/blur/blur_1.png   LQ\n"
            "RealBlur-R_BM3D_ECC_IMCORR_centroid_itensity_ref/scene001/gt/gt_1.png       GT\n"
            "RealBlur_R_train_list.txt                 '<gt path> <blur path>' a line -> train\n"
            "RealBlur_R_test_list.txt                  -> test (keys scene001_gt_1, ...)",
            "RealBlur.tar.gz of Rim et al. (github.com/rimchang/RealBlur) with its list files",
            _realblur("R"),
            "/data/RealBlur",
        ),
        Preset(
            "spa",
            "SPA-Data (real rain)",
            "real_world/000/000-5/000-5_3_4.png        rainy patch (LQ) -> train (key 000-5_3_4)\n"
            "real_world_gt/000/000_3_4.png             its clean patch (GT), shared by all frames\n"
            "real_test_1000/rain/000.png               LQ  -> test\n"
            "real_test_1000/gt/000gt.png               GT",
            "SPANet (github.com/stevewongv/SPANet) Train_Dataset_README for the training patches; the test names "
            "rain/N.png, gt/Ngt.png as third-party SPA loaders read them",
            _spa,
            "/data/SPA-Data",
        ),
    )
}
"""Every preset by name (``--preset NAME``)."""


# ----------------------------------------------------------------------------------------------
# Collecting and writing


def get_preset(name: str) -> Preset:
    """The preset called ``name``; raises :class:`PresetError` listing the valid names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


def collect_preset(name: str, root: Path) -> list[PresetSample]:
    """All samples of preset ``name`` under ``root``, sorted by split and key.

    Raises :class:`PresetError` for an unknown preset, a missing folder or file, an unmatched
    image, or two samples of one split with the same key.
    """
    preset = get_preset(name)
    root = Path(root)
    if not root.is_dir():
        raise PresetError(f"preset {name!r}: --root {root} is not a folder")
    samples = preset.collect(_Root(preset, root))
    _check_keys(name, samples)
    return sorted(samples, key=lambda sample: (_split_rank(sample.split), sample.key))


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split), "") if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def _check_keys(name: str, samples: list[PresetSample]) -> None:
    by_key: dict[tuple[str, str], list[str]] = {}
    for sample in samples:
        check_key(sample.key, f"preset {name!r}: {sample.lq or sample.gt}")
        by_key.setdefault((sample.split, sample.key), []).append(str(sample.lq or sample.gt))
    clashes = [
        f"{' and '.join(paths)} -> {key} ({split})" for (split, key), paths in sorted(by_key.items()) if len(paths) > 1
    ]
    if clashes:
        raise PresetError(f"preset {name!r}: {len(clashes)} keys are given by more than one file: {listed(clashes)}")


def preset_shard_samples(samples: Iterable[PresetSample]) -> Iterator[ShardSample]:
    """Read each sample's files as they are on disk: ``gt.<ext>``, ``lq.<ext>`` and ``mask.<ext>``."""
    samples = list(samples)
    pairs = (ImagePair(sample.key, sample.gt, sample.lq) for sample in samples)
    for sample, shard_sample in zip(samples, pair_samples(pairs)):
        if sample.mask is not None:
            name = "mask" + sample.mask.suffix.lower()
            shard_sample.files[name], shard_sample.sources[name] = sample.mask.read_bytes(), str(sample.mask)
        yield shard_sample


def by_split(samples: Iterable[PresetSample]) -> dict[str, list[PresetSample]]:
    """Samples grouped by split, splits in :data:`SPLIT_ORDER` and then by name."""
    groups: dict[str, list[PresetSample]] = {}
    for sample in samples:
        groups.setdefault(sample.split, []).append(sample)
    return {split: groups[split] for split in sorted(groups, key=_split_rank)}


def hold_out_val(
    splits: dict[str, list[PresetSample]],
    val_count: int | None = None,
    val_fraction: float | None = None,
    val_keys: list[str] | None = None,
    seed: int = 0,
) -> dict[str, list[PresetSample]]:
    """Move a ``val`` split out of ``train`` with :func:`datamodules.folders.split_keys`; refused
    when the data set has its own validation split, so that official splits are not mixed."""
    if val_count is None and val_fraction is None and val_keys is None:
        return splits
    if "val" in splits:
        raise PresetError(
            "this preset already has a val split (the data set's own); drop --val-count/--val-fraction/--val-keys"
        )
    train = {sample.key: sample for sample in splits["train"]}
    kept, held = split_keys(train, val_count, val_fraction, val_keys, seed)
    moved = {**splits, "train": [train[key] for key in kept], "val": [train[key] for key in held]}
    return {split: moved[split] for split in sorted(moved, key=_split_rank)}
