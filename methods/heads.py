"""Projection head (paper App. C): 2 x [FC 4096, BatchNorm, ReLU], FC 128, with global BN stats."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from canbench.methods.backbone import init_weights
from canbench.runtime import is_distributed


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics cover the global batch on every rank.

    SimCLR computes BN over the whole (all-TPU-core) batch. ``nn.SyncBatchNorm`` refuses CPU
    tensors, so the moments are all-reduced here with autograd (works with gloo and NCCL); on one
    process it is exactly ``nn.BatchNorm1d``. Momentum 0.1 = the paper's BN momentum 0.9.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        n_local = torch.tensor([x.shape[0]], device=x.device, dtype=torch.float32)
        stats = torch.cat([x.float().sum(0), (x.float() ** 2).sum(0), n_local])
        stats = all_reduce(stats)  # sum over ranks, gradient flows back
        d = x.shape[1]
        n = stats[-1]
        mean = stats[:d] / n
        var = stats[d:2 * d] / n - mean ** 2  # biased, as BN normalises with
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * n / (n - 1).clamp(min=1)
            self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1 - self.momentum).add_(self.momentum * unbiased.detach())
        y = (x.float() - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            y = y * self.weight + self.bias
        return y.to(x.dtype)


class ProjectionHead(nn.Module):
    """in_dim -> [Linear(hidden), BN, ReLU] x 2 -> Linear(out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 128, num_hidden: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_hidden):
            layers += [nn.Linear(d, hidden_dim), GlobalBatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_dim) -> L2-normalised (N, out_dim)."""
        return F.normalize(self.net(x), dim=-1)
