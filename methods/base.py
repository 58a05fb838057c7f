"""What CAN, SimCLR and MAE share: one encoder, optional head/decoder, per-sample masks and noise."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn as nn

from canbench.config import Config, ConfigError
from canbench.methods.backbone import ViTEncoder, build_encoder, patchify, random_masking
from canbench.methods.decoder import MAEDecoder
from canbench.methods.heads import ProjectionHead
from canbench.methods.losses import info_nce
from canbench.rng import STREAM_MASK, STREAM_NOISE, STREAM_SIGMA, counter_normal, counter_uniform

Batch = dict[str, torch.Tensor]


class PretrainMethod(nn.Module):
    """Base: builds the parts a method needs; subclasses implement ``forward(batch) -> losses``.

    A method owns what the rest of canbench needs to know about it (class attributes below): its
    defaults for the ``method.*`` keys left unset, its rules (:meth:`check`), how many views the data
    pipeline must make, and its named loss terms with the names tables use. Adding a method is a
    module with a subclass plus one line in ``canbench.methods.METHODS``.

    ``batch["views"]``: normalised views (V, N, 3, H, W); ``batch["seed"]``: per-sample seeds (N,)
    from the data pipeline. Masks, sigma and noise are pure functions of (seed, view), so neither a
    resume, the number of workers nor the number of ranks changes what the model sees — and two forwards
    of one micro-batch see the same inputs, which the gradient-cached accumulation relies on.

    A subclass implements :meth:`step_terms`: the pooled features its contrastive term reads (None without
    one) and its per-sample loss terms. :meth:`forward` adds the batch-coupled term on top
    (:meth:`contrastive_terms`: projection head with global BatchNorm, InfoNCE over the batch); the training
    step calls the two parts separately to accumulate exactly (``canbench.train.step``).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""  # how tables and figures print it
    num_views: ClassVar[int] = 2  # views per image the data pipeline makes
    defaults: ClassVar[dict[str, Any]] = {}  # method.* values for the keys a config leaves unset (None)
    loss_terms: ClassVar[dict[str, str]] = {}  # loss term -> the name tables use (paper Table 4's columns)
    contrastive: ClassVar[bool] = False  # InfoNCE over the batch: needs >= 2 samples per rank and micro-step

    @classmethod
    def check(cls, cfg: Config, world_size: int = 1) -> None:
        """Raise ConfigError naming the key when ``cfg`` breaks a rule of this method (shared ranges are
        :meth:`canbench.config.Config.validate`'s)."""
        o = cfg.optim
        if cls.contrastive and o.batch_size // (o.accum_steps * world_size) < 2:
            raise ConfigError("optim.batch_size per rank and micro-step must be >= 2 for the contrastive loss")

    def __init__(self, cfg: Config, *, head: bool, decoder: bool, sigma_embedding: bool = False) -> None:
        super().__init__()
        self.cfg = cfg
        m = cfg.method
        self.mask_ratio = float(m.mask_ratio)
        self.encoder: ViTEncoder = build_encoder(cfg.model)
        self.patch_size = self.encoder.patch_size
        mo = cfg.model
        self.head = ProjectionHead(self.encoder.embed_dim, mo.proj_hidden, mo.proj_out) if head else None
        self.decoder = MAEDecoder(self.encoder.num_patches, self.encoder.embed_dim, self.patch_size,
                                  dim=mo.decoder_dim, depth=mo.decoder_depth, num_heads=mo.decoder_heads,
                                  num_prefix_tokens=self.encoder.num_prefix_tokens,
                                  sigma_embedding=sigma_embedding) if decoder else None
        if not hasattr(self, "weights"):
            self.weights: dict[str, float] = {}  # loss term -> weight in the total loss (set by the subclass)

    def step_terms(self, batch: Batch, local: bool = True) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """``(z, terms)``: the pooled encoder features the contrastive term reads, (V * N, D) view-major (None for a
        method without one), and the per-sample loss terms (skipped when ``local`` is False)."""
        raise NotImplementedError

    @property
    def batch_coupled(self) -> bool:
        """Whether a loss term couples the samples of a batch (InfoNCE negatives, the head's BatchNorm)."""
        return self.head is not None

    def contrastive_terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Projection head (BatchNorm over the whole batch, all ranks) and InfoNCE on pooled features ``z``
        (2N, D) laid out as [view 1 of every sample | view 2 of every sample]."""
        n = z.shape[0] // 2
        u = self.head(z)
        return {"infonce": info_nce(u[:n], u[n:], self.cfg.method.temperature)}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every loss term of ``batch`` and their weighted sum ``loss``."""
        z, terms = self.step_terms(batch)
        if z is not None:
            terms = {**self.contrastive_terms(z), **terms}
        return self.combine(terms, self.weights)

    def empty_terms(self) -> dict[str, str]:
        """Loss terms with a non-zero weight that this config leaves empty (always 0, no gradient), with the
        reason; the run summary records them (docs/protocols.md §6.6)."""
        if self.mask_ratio == 0.0 and self.weights.get("rec", 0.0) > 0:
            return {"rec": f"method.mask_ratio=0 masks no patch, so the reconstruction term (masked patches only) "
                           f"is 0 with no gradient; its weight {self.weights['rec']:.3g} goes to no other term"}
        return {}

    # ---- shared stages ----------------------------------------------------------------------
    @staticmethod
    def view_seeds(seeds: torch.Tensor, num_views: int) -> torch.Tensor:
        """(N,) per-sample seeds -> (V*N,) per-(view, sample) seeds, view-major like the views."""
        v = torch.arange(num_views, device=seeds.device, dtype=torch.int64)[:, None]
        return (seeds.to(torch.int64)[None, :] * 0x9E3779B1 + v * 0x7F4A7C15 + 1).reshape(-1) & ((1 << 62) - 1)

    def masking(self, seeds: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """Per-sample masks: ids_keep (B, K) or None, mask (B, L) 1 = removed, ids_restore or None."""
        length = self.encoder.num_patches
        if self.mask_ratio == 0.0:
            return None, torch.zeros(seeds.shape[0], length, device=seeds.device), None
        noise = counter_uniform(seeds, (length,), STREAM_MASK)
        return random_masking(noise, self.mask_ratio)

    def add_noise(self, x: torch.Tensor, seeds: torch.Tensor, sigma_max: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x <- x + sigma * e, sigma ~ U[0, sigma_max] per image (paper Sec. 3.4); returns (x, sigma, sigma*e)."""
        sigma = counter_uniform(seeds, (1,), STREAM_SIGMA, dtype=x.dtype).view(-1) * sigma_max
        e = counter_normal(seeds, tuple(x.shape[1:]), STREAM_NOISE, dtype=x.dtype)
        added = sigma.view(-1, 1, 1, 1) * e
        return x + added, sigma, added

    def encode(self, x: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """Visible tokens through the encoder: (B, prefix + K, D)."""
        return self.encoder.forward_features(x, ids_keep)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction target: clean pixels as patches, optionally per-patch normalised."""
        from canbench.methods.losses import normalize_patches

        t = patchify(x, self.patch_size)
        return normalize_patches(t) if self.cfg.method.norm_pix_loss else t

    @staticmethod
    def combine(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, torch.Tensor]:
        """loss = sum of weight * term over terms with a non-zero weight, next to the terms as computed.

        The terms are returned undetached; callers detach them for logging (the engine does). Returning
        ``term.detach()`` next to ``1.0 * term`` from a ``torch.compile``d forward loses the loss's
        grad_fn (torch 2.14 inductor: "element 0 of tensors does not require grad" for the one-term
        SimCLR and MAE losses); ``test_compiled_one_term_loss_keeps_its_graph`` pins this.
        """
        loss = sum(weights[k] * v for k, v in terms.items() if weights.get(k, 0.0) > 0)
        out = dict(terms)
        out["loss"] = loss
        return out
