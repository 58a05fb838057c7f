"""Write an ImageNet-like tree of synthetic JPEG files, for end-to-end throughput runs without ImageNet.

``ROOT/train/classK/imgNNNNNN.jpg``: sizes drawn around ImageNet's (width 350-500 x height 280-375,
swapped for a quarter of the files: portrait), baseline JPEG at quality 90 from smooth colour fields
plus pixel noise (~80 KiB a file; ImageNet's train files average ~110 KiB). Deterministic for a given
seed; written in parallel, each file atomically (temp name + rename).

    python -m canbench.benchmarks.perf.make_jpegs /tmp/jpegs --images 4096 --classes 16 --workers 16
"""

from __future__ import annotations

import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import PIL.Image


def _size(rng: np.random.Generator) -> tuple[int, int]:
    w, h = int(rng.integers(350, 501)), int(rng.integers(280, 376))
    return (h, w) if rng.random() < 0.25 else (w, h)


def write_one(args: tuple[str, int, int, int]) -> int:
    """Write image ``index`` under ``root``; returns its size in bytes."""
    root, index, classes, seed = args
    rng = np.random.default_rng([seed, index])
    w, h = _size(rng)
    small = rng.integers(0, 256, (int(rng.integers(4, 12)), int(rng.integers(4, 12)), 3), dtype=np.uint8)
    field = np.asarray(PIL.Image.fromarray(small).resize((w, h), PIL.Image.BICUBIC), np.int16)
    arr = np.clip(field + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    path = Path(root) / "train" / f"class{index % classes:03d}" / f"img{index:06d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    PIL.Image.fromarray(arr).save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)
    return path.stat().st_size


def write_jpegs(root: str | os.PathLike, images: int, classes: int = 16, workers: int = 1, seed: int = 0) -> int:
    """Write ``images`` files (skipping none: an existing tree is overwritten); returns total bytes."""
    if images < 1 or classes < 1:
        raise ValueError(f"images={images} and classes={classes} must be >= 1")
    jobs = [(str(root), i, classes, seed) for i in range(images)]
    if workers <= 1:
        return sum(map(write_one, jobs))
    with Pool(workers) as pool:
        return sum(pool.imap_unordered(write_one, jobs, chunksize=32))


def main(argv: list[str] | None = None) -> None:
    """Command line entry."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", help="folder to write ROOT/train/classK/*.jpg into")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        total = write_jpegs(args.root, args.images, args.classes, args.workers, args.seed)
    except ValueError as e:
        sys.exit(f"make_jpegs: {e}")
    print(f"wrote {args.images} JPEGs to {args.root}/train ({total / args.images / 1024:.1f} KiB on average)")


if __name__ == "__main__":
    main()
