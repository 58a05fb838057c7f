"""SimCLR (paper's own "†" implementation): same encoder, augmentations and head as CAN."""

from __future__ import annotations

import torch

from canbench.config import Config, ConfigError
from canbench.methods.base import Batch, PretrainMethod


class SimCLR(PretrainMethod):
    """Two views, mean-pooled encoder tokens -> projection head -> InfoNCE (tau 0.1).

    ``method.mask_ratio`` (default 0) masks each view independently (paper Fig. 6).
    """

    name = "simclr"
    label = "SimCLR†"
    num_views = 2
    defaults = dict(mask_ratio=0.0, l_nce=1.0, lam=1.0, sigma_max=0.0, noise_mode="none")
    loss_terms = {"infonce": "contrastive_loss"}
    contrastive = True

    @classmethod
    def check(cls, cfg: Config, world_size: int = 1) -> None:
        if cfg.method.l_nce != 1.0:
            raise ConfigError("method.l_nce must be 1 for simclr (contrastive only); use method can to mix losses")
        super().check(cfg, world_size)

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg, head=True, decoder=False)
        self.weights = {"infonce": 1.0}

    def step_terms(self, batch: Batch, local: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        views = batch["views"]
        v, n = views.shape[:2]
        if v != 2:
            raise ValueError(f"SimCLR needs 2 views, got {v}")
        x = views.reshape(v * n, *views.shape[2:])
        ids_keep, _, _ = self.masking(self.view_seeds(batch["seed"], v))
        return self.encoder.forward_head(self.encode(x, ids_keep)), {}
