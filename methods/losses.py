"""Loss functions: InfoNCE (negatives gathered across ranks), masked reconstruction, denoising."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from canbench.runtime import rank_world


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather (N_local, D) from every rank -> (N_global, D); gradients flow to each source."""
    rank, world = rank_world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def info_nce(u1: torch.Tensor, u2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent / InfoNCE (paper Sec. 3.2) for two L2-normalised views u1, u2 (n_local, r).

    Each of the 2n anchors has its other view as positive and the other 2n-2 samples of the
    GLOBAL batch (all ranks) as negatives. Returns the mean over this rank's 2n_local anchors; with
    DDP gradient averaging this equals the single-process loss over the concatenated batch.
    """
    rank, world = rank_world()
    n = u1.shape[0]
    g1, g2 = gather_with_grad(u1), gather_with_grad(u2)  # (n_global, r)
    n_global = g1.shape[0]
    keys = torch.cat([g1, g2], dim=0).float()  # (2 n_global, r): [view1 of all | view2 of all]
    anchors = torch.cat([u1, u2], dim=0).float()  # (2n, r)
    logits = anchors @ keys.t() / temperature  # (2n, 2 n_global)
    offset = rank * n
    local = torch.arange(n, device=u1.device) + offset
    self_idx = torch.cat([local, local + n_global])  # anchor's own column
    pos_idx = torch.cat([local + n_global, local])  # the other view
    logits = logits.masked_fill(F.one_hot(self_idx, 2 * n_global).bool(), float("-inf"))
    return F.cross_entropy(logits, pos_idx)


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean over selected patches of the per-patch MSE (MAE convention).

    pred, target (N, L, P); weight (N, L) with 1 for patches that count (e.g. mask for L_rec,
    1 - mask for L_denoise). Returns 0 when nothing is selected.
    """
    per_patch = ((pred.float() - target.float()) ** 2).mean(dim=-1)
    denom = weight.sum()
    return (per_patch * weight).sum() / denom.clamp(min=1.0)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """MAE ``norm_pix_loss``: per-patch mean/var normalisation of the target (N, L, P)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5
