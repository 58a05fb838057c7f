"""MAE (He et al. 2022): one view, 75% masking, reconstruction of the masked patches."""

from __future__ import annotations

import torch

from canbench.config import Config
from canbench.methods.base import Batch, PretrainMethod
from canbench.methods.losses import masked_patch_mse


class MAE(PretrainMethod):
    """One view (the first if more are given), shared decoder, MSE on masked patches only."""

    num_views = 1

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, head=False, decoder=True)

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        x = batch["views"][0]  # (N, 3, H, W)
        seeds = self.view_seeds(batch["seed"], 1)
        ids_keep, mask, ids_restore = self.masking(seeds)
        pred = self.decoder(self.encode(x, ids_keep), ids_restore)
        return self.combine({"rec": masked_patch_mse(pred, self.target(x), mask)}, {"rec": 1.0})
