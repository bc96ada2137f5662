"""``ir-lightning photos``: the colour-photo shards the shipped models are trained on (docs/models.md).

Writes ``train``, ``val`` and ``test`` shards from scikit-image's colour photos and the photographs in
Debian's plasma-workspace-wallpapers package (which photos, the splits and the tiling:
``datamodules.photos``). Get the package first; nothing is downloaded here::

    apt-get download plasma-workspace-wallpapers      # any machine with Debian's archive; 94 MB
    ir-lightning photos --source . --out shards/photos
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from datamodules import photos
from datamodules.format import ShardError
from datamodules.writer import write_shards


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ir-lightning photos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        metavar="PATH",
        help=f"the {photos.PLASMA_PACKAGE}_*.deb file, a folder holding it, or its tree as extracted by dpkg-deb -x",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the shards (created)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return run(args)
    except ShardError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    path, is_deb = photos.find_plasma(args.source)
    digest = photos.sha256(path) if is_deb else None
    if digest is not None and digest != photos.PLASMA_SHA256:
        print(
            f"warning: {path} is not the package the shipped models saw (sha256 {digest}, expected "
            f"{photos.PLASMA_SHA256}); the shards will differ",
            file=sys.stderr,
        )
    by_split: dict[str, list[photos.Photo]] = {"train": [], "val": [], "test": []}
    for photo in photos.photos(args.source):
        by_split[photo.split].append(photo)
    manifest = {"source": str(path), "sha256": digest, "reduce": photos.REDUCE, "tile": photos.TILE, "splits": {}}
    for split, items in by_split.items():
        stats = write_shards(
            photos.shard_samples(items), args.out, split, maxcount=64, progress=not args.no_progress, total=len(items)
        )
        manifest["splits"][split] = {"pattern": stats.pattern, "samples": stats.samples, "keys": [p.key for p in items]}
        print(f"  {split}: {stats.samples} images in {stats.shards} shard(s): {stats.pattern}")
    (Path(args.out) / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
