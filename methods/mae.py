"""MAE (He et al. 2022): one view, 75% masking, reconstruction of the masked patches."""

from __future__ import annotations

import torch

from canbench.config import Config, ConfigError
from canbench.methods.base import Batch, PretrainMethod
from canbench.methods.losses import masked_patch_mse


class MAE(PretrainMethod):
    """One view (the first if more are given), shared decoder, MSE on masked patches only."""

    name = "mae"
    label = "MAE†"
    num_views = 1
    defaults = dict(mask_ratio=0.75, l_nce=0.0, lam=1.0, sigma_max=0.0, noise_mode="none")
    loss_terms = {"rec": "reconstruction_loss"}

    @classmethod
    def check(cls, cfg: Config, world_size: int = 1) -> None:
        if cfg.method.l_nce != 0.0:
            raise ConfigError("method.l_nce must be 0 for mae (one view, no contrastive term); use method can")
        if cfg.method.mask_ratio == 0.0:
            raise ConfigError("method.mask_ratio=0 leaves mae nothing to reconstruct (its loss is over masked "
                              "patches only)")
        super().check(cfg, world_size)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, head=False, decoder=True)
        self.weights = {"rec": 1.0}

    def step_terms(self, batch: Batch, local: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        x = batch["views"][0]  # (N, 3, H, W)
        seeds = self.view_seeds(batch["seed"], 1)
        ids_keep, mask, ids_restore = self.masking(seeds)
        pred = self.decoder(self.encode(x, ids_keep), ids_restore)
        return None, {"rec": masked_patch_mse(pred, self.target(x), mask)}
