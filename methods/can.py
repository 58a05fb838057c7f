"""CAN (paper Sec. 3): contrastive + masked reconstruction + noise prediction, one shared encoder."""

from __future__ import annotations

import logging

import torch

from canbench.config import Config, ConfigError
from canbench.methods.base import Batch, PretrainMethod
from canbench.methods.losses import masked_patch_mse

log = logging.getLogger(__name__)


class CAN(PretrainMethod):
    """L = l_nce * L_InfoNCE + (1 - l_nce) * (lam * L_rec + (1 - lam) * L_denoise).

    Noise modes (paper Table 1): ``none`` (no noise), ``augment_only`` (noise on the input, no
    denoising loss), ``loss_without_sigma_embedding`` (denoising loss, decoder not told sigma),
    ``full``. Without a denoising loss (none / augment_only) the reconstruction takes the whole
    non-contrastive weight (lam = 1). Any weight may be 0 (Table 5: AN, CN, CA); parts whose
    weight is 0 are not built, so every parameter trains.
    """

    name = "can"
    label = "CAN"
    num_views = 2
    defaults = dict(mask_ratio=0.5, l_nce=0.03, lam=0.7, sigma_max=0.05, noise_mode="full")  # paper Sec. 3, 5
    loss_terms = {"infonce": "contrastive_loss", "rec": "reconstruction_loss", "denoise": "denoise_loss"}
    contrastive = True

    @classmethod
    def check(cls, cfg: Config, world_size: int = 1) -> None:
        m = cfg.method
        if m.noise_mode != "none" and m.sigma_max == 0.0:
            raise ConfigError(f"method.noise_mode={m.noise_mode!r} needs method.sigma_max > 0 "
                              "(or set method.noise_mode=none)")
        super().check(cfg, world_size)

    def __init__(self, cfg: Config) -> None:
        m = cfg.method
        self.noise_mode = m.noise_mode
        lam = m.lam if m.noise_mode in ("loss_without_sigma_embedding", "full") else 1.0
        self.weights = {"infonce": m.l_nce, "rec": (1 - m.l_nce) * lam, "denoise": (1 - m.l_nce) * (1 - lam)}
        need_decoder = self.weights["rec"] > 0 or self.weights["denoise"] > 0
        super().__init__(cfg, head=m.l_nce > 0, decoder=need_decoder,
                         sigma_embedding=need_decoder and m.noise_mode == "full")
        self.sigma_max = m.sigma_max if m.noise_mode != "none" else 0.0
        for term, why in self.empty_terms().items():
            log.warning("can: the %s term is empty: %s", term, why)

    def step_terms(self, batch: Batch, local: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        views = batch["views"]  # (V, N, 3, H, W), V = 2 (1 allowed without the contrastive term)
        v, n = views.shape[:2]
        x = views.reshape(v * n, *views.shape[2:])  # both views in one encoder pass
        seeds = self.view_seeds(batch["seed"], v)
        target = self.target(x) if local and self.decoder is not None else None
        sigma = added = None
        if self.sigma_max > 0:
            x, sigma, added = self.add_noise(x, seeds, self.sigma_max)  # noise before masking
        ids_keep, mask, ids_restore = self.masking(seeds)
        tokens = self.encode(x, ids_keep)
        z = None
        if self.head is not None:
            if v != 2:
                raise ValueError(f"the contrastive term needs 2 views, got {v}")
            z = self.encoder.forward_head(tokens)  # mean of visible tokens: what the head reads
        terms: dict[str, torch.Tensor] = {}
        if local and self.decoder is not None:
            pred = self.decoder(tokens, ids_restore, sigma if self.decoder.sigma_embed is not None else None)
            if self.weights["rec"] > 0:
                terms["rec"] = masked_patch_mse(pred, target, mask)  # masked patches only
            if self.weights["denoise"] > 0:
                den_target = self.patchify_noise(added)
                terms["denoise"] = masked_patch_mse(pred, den_target, 1.0 - mask)  # visible patches only
        return z, terms

    def patchify_noise(self, added: torch.Tensor | None) -> torch.Tensor:
        from canbench.methods.backbone import patchify

        assert added is not None, "denoising needs noise (sigma_max > 0)"
        return patchify(added, self.patch_size)
