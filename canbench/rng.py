"""Counter-based randomness: every random draw is a pure function of (seed, epoch, index, stream).

Why: a resumed run, a different number of DataLoader workers or a different number of ranks must
show the model exactly the same augmentations, masks and noise. Per-sample seeds are derived with
splitmix64 on Python ints (:func:`sample_seed`); batched draws on any device hash (seed, counter)
with integer tensor ops (:func:`counter_uniform`, :func:`counter_normal`), so the GPU path needs no
Python loop over samples and no host synchronisation.
"""

from __future__ import annotations

import math

import torch

_MASK64 = (1 << 64) - 1
_MASK32 = 0xFFFFFFFF

# Stream ids: independent random streams derived from one per-sample seed.
STREAM_AUGMENT = 1
STREAM_MASK = 2
STREAM_SIGMA = 3
STREAM_NOISE = 4


def splitmix64(x: int) -> int:
    """One splitmix64 step on a Python int (64-bit wrap-around)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def sample_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed from (seed, key1, key2, ...): e.g. ``sample_seed(seed, epoch, index, view)``."""
    h = splitmix64(seed & _MASK64)
    for k in keys:
        h = splitmix64(h ^ (k & _MASK64))
    return h & ((1 << 63) - 1)


def torch_generator(seed: int, *keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from (seed, keys)."""
    g = torch.Generator(device=device)
    g.manual_seed(sample_seed(seed, *keys))
    return g


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash on int64 tensors holding values in [0, 2^32).

    Multipliers are below 2^31 so every product fits in a signed int64 (no overflow).
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x5BD1E995) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0x2C1B3C6D) & _MASK32
    return x ^ (x >> 16)


def counter_bits(seeds: torch.Tensor, shape: tuple[int, ...], stream: int) -> torch.Tensor:
    """Uniform 32-bit integers, shape ``(N, *shape)``, a pure function of (seed_i, stream, position)."""
    seeds = seeds.to(torch.int64)
    n = seeds.shape[0]
    numel = math.prod(shape)
    lo = seeds & _MASK32
    hi = (seeds >> 32) & _MASK32
    key = _hash32(lo ^ _hash32(hi ^ ((stream * 0x27D4EB2F) & _MASK32)))  # (N,)
    ctr = torch.arange(numel, device=seeds.device, dtype=torch.int64)
    x = _hash32(key[:, None] ^ _hash32(ctr[None, :] ^ 0x165667B1))
    x = _hash32(x ^ key[:, None])
    return x.view(n, *shape)


def counter_uniform(seeds: torch.Tensor, shape: tuple[int, ...], stream: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) (open interval), shape ``(N, *shape)``, from per-sample seeds ``(N,)``."""
    bits = counter_bits(seeds, shape, stream)
    return ((bits.to(torch.float64) + 0.5) / 4294967296.0).to(dtype)


def counter_normal(seeds: torch.Tensor, shape: tuple[int, ...], stream: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) via Box-Muller on two counter streams, shape ``(N, *shape)``."""
    u1 = counter_uniform(seeds, shape, stream * 2 + 1001, dtype=torch.float32)
    u2 = counter_uniform(seeds, shape, stream * 2 + 1002, dtype=torch.float32)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.to(dtype)
