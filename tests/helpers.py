"""Small data sets shared by several test modules (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

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
