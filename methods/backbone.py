"""The shared ViT encoder: timm blocks, fixed 2-D sin-cos positions, MAE-style masking, avg pool.

One implementation serves CAN, SimCLR, MAE and every evaluation suite. Parameter names equal
timm's ``VisionTransformer`` so :meth:`ViTEncoder.export_timm` loads into
``timm.create_model(name, num_classes=0, global_pool="avg", class_token=False, fc_norm=False)``
with ``strict=True``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from canbench.config import ARCHS, ModelConfig

LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)  # timm / MAE ViT norm epsilon

TIMM_NAMES = {
    "vit_micro": "vit_tiny_patch16_224",  # micro = tiny's width with 4 blocks at 32 px / patch 4
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


def sincos_pos_embed_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """MAE ``get_1d_sincos_pos_embed_from_grid``: pos (M,) -> (M, dim) as [sin | cos]."""
    assert dim % 2 == 0, dim
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_pos_embed_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos embedding (MAE ``util/pos_embed.py``): (1, [1+] G*G, dim), cls row zero."""
    assert dim % 4 == 0, f"embed dim {dim} must be divisible by 4 for 2-D sin-cos"
    gh, gw = np.meshgrid(np.arange(grid_size, dtype=np.float64), np.arange(grid_size, dtype=np.float64))
    # MAE: grid = meshgrid(w, h) -> first half of dims encodes w (column), second half h (row)
    emb = np.concatenate([sincos_pos_embed_1d(dim // 2, gh), sincos_pos_embed_1d(dim // 2, gw)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    return torch.from_numpy(emb).float().unsqueeze(0)


def random_masking(noise: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE ``random_masking`` driven by given noise (N, L) in [0, 1).

    Returns ids_keep (N, L_keep), mask (N, L) with 0 = keep, 1 = remove, ids_restore (N, L).
    Exactly ``int(L * (1 - mask_ratio))`` tokens are kept per sample.
    """
    n, length = noise.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascend: small is keep
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, mask, ids_restore


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (N, L, D), ids (N, K) -> (N, K, D)."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), MAE's patch order (row-major, pixels then channels)."""
    n, c, h, w = imgs.shape
    gh, gw = h // p, w // p
    x = imgs.reshape(n, c, gh, p, gw, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int = 3) -> torch.Tensor:
    """(N, L, p*p*C) -> (N, C, H, W)."""
    n, length, _ = x.shape
    g = int(math.isqrt(length))
    x = x.reshape(n, g, g, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, c, g * p, g * p)


def init_weights(module: nn.Module) -> None:
    """MAE / paper App. C init: xavier_uniform Linear, zero bias, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ViTEncoder(nn.Module):
    """ViT encoder over all or only the visible tokens, with timm's model interface."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, class_token: bool = False, pool: str = "avg",
                 drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> None:
        super().__init__()
        if pool not in ("avg", "cls") or (pool == "cls" and not class_token):
            raise ValueError(f"pool={pool!r} with class_token={class_token} is not supported")
        self.img_size, self.patch_size, self.embed_dim = img_size, patch_size, embed_dim
        self.depth, self.num_heads, self.mlp_ratio = depth, num_heads, mlp_ratio
        self.num_prefix_tokens = 1 if class_token else 0
        self.pool = pool
        self.grad_checkpointing = grad_checkpointing
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=3, embed_dim=embed_dim)
        self.num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        grid = img_size // patch_size
        # fixed, not trained; persistent so exported state dicts carry it (timm's key "pos_embed")
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, grid, cls_token=class_token))
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=dpr[i], norm_layer=LayerNorm6)
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init()

    def _init(self) -> None:
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # patch embedding viewed as a Linear
        nn.init.zeros_(self.patch_embed.proj.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_weights)
        init_weights(self.norm)

    # ---- timm interface -------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N, 3, H, W) [+ visible ids (N, K)] -> normed tokens (N, prefix + K, D)."""
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, self.num_prefix_tokens:]  # positions added before masking
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)
        if self.cls_token is not None:
            cls = self.cls_token + self.pos_embed[:, :1]
            x = torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        """Tokens (N, T, D) -> representation (N, D): mean of patch tokens, or the cls token."""
        if self.pool == "cls":
            return x[:, 0]
        return x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """Images -> pooled representation (N, D)."""
        return self.forward_head(self.forward_features(x, ids_keep), pre_logits=True)

    # ---- export ---------------------------------------------------------------------------
    def timm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for timm.create_model that build the same encoder."""
        return dict(img_size=self.img_size, patch_size=self.patch_size, embed_dim=self.embed_dim,
                    depth=self.depth, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, num_classes=0,
                    global_pool="token" if self.pool == "cls" else "avg",
                    class_token=self.cls_token is not None, fc_norm=False)

    def export_timm(self) -> dict[str, torch.Tensor]:
        """State dict that timm's VisionTransformer (``timm_kwargs``) loads with strict=True."""
        return {k: v.detach().clone() for k, v in self.state_dict().items()}


def build_encoder(cfg: ModelConfig) -> ViTEncoder:
    """The encoder for ``cfg`` (arch defaults for unset image/patch size)."""
    a = ARCHS[cfg.arch]
    return ViTEncoder(img_size=cfg.img_size or a["img_size"], patch_size=cfg.patch_size or a["patch_size"],
                      embed_dim=a["embed_dim"], depth=a["depth"], num_heads=a["num_heads"],
                      class_token=cfg.class_token, pool=cfg.pool, drop_path_rate=cfg.drop_path,
                      grad_checkpointing=cfg.grad_checkpointing)
