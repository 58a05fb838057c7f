"""MAE-style decoder shared by CAN and MAE, with optional noise-level (sigma) conditioning."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from canbench.methods.backbone import LayerNorm6, gather_tokens, init_weights, sincos_pos_embed_2d

# sigma is tiny (<= sigma_max = 0.05); like a diffusion timestep it is scaled before the
# sinusoidal embedding so the frequencies resolve it (t = 1000 * sigma, the DDPM timestep range).
SIGMA_EMBED_SCALE = 1000.0


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of scalars t (N,) -> (N, dim) as [cos | sin] (DDPM / ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class SigmaEmbedding(nn.Module):
    """sigma (N,) -> sinusoidal embedding -> 2-layer ReLU MLP (width d) -> (N, d) (paper Sec. 3.4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(sigma * SIGMA_EMBED_SCALE, self.dim))


class MAEDecoder(nn.Module):
    """Linear to width d, mask tokens, fixed sin-cos positions, blocks, norm, linear to p*p*3."""

    def __init__(self, num_patches: int, encoder_dim: int, patch_size: int, dim: int = 512, depth: int = 8,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_prefix_tokens: int = 0,
                 sigma_embedding: bool = False, in_chans: int = 3) -> None:
        super().__init__()
        self.num_patches, self.num_prefix_tokens = num_patches, num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        grid = int(math.isqrt(num_patches))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(dim, grid, cls_token=num_prefix_tokens > 0))
        self.sigma_embed = SigmaEmbedding(dim) if sigma_embedding else None
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm6)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_size * patch_size * in_chans)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor | None,
                sigma: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder tokens (N, prefix + K, De), ids_restore (N, L) or None (no masking), sigma (N,).

        Returns per-patch predictions (N, L, p*p*3) in the original patch order.
        """
        x = self.decoder_embed(tokens)
        prefix, x = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        if ids_restore is not None:
            n, k = x.shape[:2]
            mask_tokens = self.mask_token.to(x.dtype).expand(n, ids_restore.shape[1] - k, -1)
            x = gather_tokens(torch.cat([x, mask_tokens], dim=1), ids_restore)  # unshuffle
        x = torch.cat([prefix, x], dim=1) + self.pos_embed
        if self.sigma_embed is not None:
            if sigma is None:
                raise ValueError("this decoder is sigma-conditioned: pass sigma (N,)")
            x = x + self.sigma_embed(sigma).to(x.dtype)[:, None, :]  # every token, mask tokens included
        x = self.norm(self.blocks(x))
        return self.pred(x)[:, self.num_prefix_tokens:]
