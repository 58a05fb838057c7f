"""CPU throughput of the two-view pretraining input pipeline (images per second, two views each).

Compares (a) a plain torchvision PIL SimCLR transform (RandomResizedCrop, flip, ColorJitter p 0.8,
Grayscale p 0.2, GaussianBlur p 0.5, ToTensor) applied twice per image inside a DataLoader with
(b) canbench's pipeline: geometric part per sample in the DataLoader (uint8 crops + parameter rows),
photometric part batched in the consumer (``to_model_input``, as in the training step). Both at 32 px
on the built-in data set (pre-rendered, so only augmentation is timed) and at 224 px on synthetic
500x375 JPEG files written to a temporary folder (decoding included), with 0 and 2 workers.

    python benchmarks/perf/bench_data_pipeline.py [--json] [--images-32 N] [--images-224 N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from canbench.data.augment import ViewAugConfig, blur_kernel_size
from canbench.data.builtin import BuiltinShapes
from canbench.data.datasets import build_dataset
from canbench.data.loader import build_pretrain_loader, to_model_input


def simclr_pil_transform(size: int) -> T.Compose:
    """The usual torchvision SimCLR view transform on PIL images (reference)."""
    k = blur_kernel_size(size)
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.8, 0.8, 0.8, 0.2)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(k, sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(),
    ])


class _PILTwoViews(Dataset):
    """Reference: (image -> PIL) then the PIL transform twice."""

    def __init__(self, base: Dataset, size: int, from_files: list[str] | None = None) -> None:
        self.base, self.tf, self.files = base, simclr_pil_transform(size), from_files

    def __len__(self) -> int:
        return len(self.files) if self.files is not None else len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.files is not None:
            with open(self.files[i], "rb") as f:
                img = PIL.Image.open(f).convert("RGB")
        else:
            img = PIL.Image.fromarray(self.base[i][0].permute(1, 2, 0).numpy())
        return torch.stack([self.tf(img), self.tf(img)])


def _time_reference(ds: Dataset, batch: int, workers: int, n_batches: int) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False, generator=torch.Generator().manual_seed(0))
    t0, seen = time.perf_counter(), 0
    for k, views in enumerate(loader):
        seen += views.shape[0]
        if k + 1 >= n_batches:
            break
    return seen / (time.perf_counter() - t0)


def _time_ours(base: Dataset, size: int, batch: int, workers: int, n_batches: int) -> float:
    cfg = ViewAugConfig(img_size=size)
    loader = build_pretrain_loader(base, cfg, num_views=2, seed=0, global_batch=batch, total_steps=n_batches,
                                   num_workers=workers)
    t0, seen = time.perf_counter(), 0
    for b in loader:
        x = to_model_input(b, cfg, "cpu")  # batched photometric part, as in the training step
        seen += x.shape[1]
    return seen / (time.perf_counter() - t0)


def _write_jpegs(folder: Path, n: int) -> list[str]:
    """n synthetic 500x375 JPEGs (smooth colour fields + noise) in an ImageFolder tree."""
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = PIL.Image.fromarray(small).resize((500, 375), PIL.Image.BICUBIC)
        arr = np.clip(np.asarray(img, np.int16) + rng.integers(-20, 21, (375, 500, 3)), 0, 255).astype(np.uint8)
        path = folder / "train" / f"class{i % 4}" / f"img{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(arr).save(path, quality=90)
        files.append(str(path))
    return files


def run(images_32: int, images_224: int) -> list[dict[str, object]]:
    """Measure every (resolution, pipeline, workers) cell; returns result rows."""
    rows: list[dict[str, object]] = []
    torch.manual_seed(0)
    builtin = BuiltinShapes("train", size=images_32)
    for i in range(len(builtin)):  # pre-render: time augmentation, not image generation
        builtin[i]
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_jpegs(Path(tmp), images_224)
        folder = build_dataset("imagefolder", root=tmp, split="train")
        cases = [(32, builtin, None, 128, images_32 // 128), (224, folder, files, 32, images_224 // 32)]
        for size, base, flist, batch, n_batches in cases:
            for workers in (0, 2):
                ref = _time_reference(_PILTwoViews(base, size, flist), batch, workers, n_batches)
                ours = _time_ours(base, size, batch, workers, n_batches)
                for name, ips in (("torchvision PIL (reference)", ref), ("canbench (geometric + batched photo)", ours)):
                    rows.append({"img_size": size, "pipeline": name, "workers": workers, "batch": batch,
                                 "images": batch * n_batches, "img_per_s": round(ips, 1)})
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line entry: print a table (or JSON with --json)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument("--images-32", type=int, default=1536, help="built-in images per 32 px cell")
    ap.add_argument("--images-224", type=int, default=192, help="JPEG images per 224 px cell")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), os.cpu_count() or 1))
    t0 = time.perf_counter()
    rows = run(args.images_32, args.images_224)
    meta = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "seconds": round(time.perf_counter() - t0, 1)}
    if args.json:
        json.dump({"meta": meta, "rows": rows}, sys.stdout, indent=1)
        print()
        return
    print(f"two-view pipeline throughput, {meta}")
    print(f"{'px':>4} {'workers':>7} {'pipeline':<40} {'img/s':>9}")
    for r in rows:
        print(f"{r['img_size']:>4} {r['workers']:>7} {r['pipeline']:<40} {r['img_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
