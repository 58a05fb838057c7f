"""Small data sets shared by several test modules (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset


class Blobs(Dataset):
    """uint8 (3, 32, 32) images whose class (of 3) is the dominant colour channel: easy for any encoder."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 3
        self.imgs = (torch.rand(n, 3, 32, 32, generator=g) * 60).to(torch.uint8)
        for i in range(n):
            self.imgs[i, int(self.y[i])] += 150
        self.targets = self.y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.imgs[i], int(self.y[i])


JPEG_SIZES = [(40, 56), (47, 51), (54, 46), (61, 41), (40, 65), (33, 70)]  # (H, W), varied aspect


def gradient_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth colour gradient with mild noise: uint8 (3, H, W), JPEG-friendly."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    img = torch.stack([yy, xx, 0.5 + 0.5 * torch.sin(6 * yy * xx)]) * 255 + torch.randn(3, h, w, generator=g) * 8
    return img.clamp(0, 255).to(torch.uint8)


def write_jpeg_tree(root: Path) -> Path:
    """root/train/<class>/<i>.jpg: 2 classes x 6 JPEGs of the sizes above, plus one PNG (a CPU-decode fallback)."""
    from torchvision.io import encode_jpeg, encode_png

    for c in range(2):
        d = root / "train" / f"class{c}"
        d.mkdir(parents=True)
        for i, (h, w) in enumerate(JPEG_SIZES):
            (d / f"{i}.jpg").write_bytes(encode_jpeg(gradient_image(h, w, 10 * c + i), quality=90).numpy().tobytes())
    (root / "train" / "class1" / "z.png").write_bytes(encode_png(gradient_image(44, 52, 99)).numpy().tobytes())
    return root
