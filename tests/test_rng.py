"""Counter-based RNG (canbench/rng.py) against a naive pure-Python reference, plus its statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from canbench.rng import (
    STREAM_AUGMENT,
    STREAM_MASK,
    STREAM_NOISE,
    counter_bits,
    counter_normal,
    counter_uniform,
    sample_seed,
    splitmix64,
    torch_generator,
)

M32, M64 = 0xFFFFFFFF, (1 << 64) - 1


def ref_splitmix64(state: int) -> int:
    """Vigna's splitmix64: advance the state by the golden gamma, then mix (one output)."""
    z = (state + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def ref_hash32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x5BD1E995) & M32
    x ^= x >> 13
    x = (x * 0x2C1B3C6D) & M32
    return x ^ (x >> 16)


def ref_bits(seed: int, counter: int, stream: int) -> int:
    """One 32-bit draw, element by element, as the module documents it."""
    lo, hi = seed & M32, (seed >> 32) & M32
    key = ref_hash32(lo ^ ref_hash32(hi ^ ((stream * 0x27D4EB2F) & M32)))
    x = ref_hash32(key ^ ref_hash32(counter ^ 0x165667B1))
    return ref_hash32(x ^ key)


def test_splitmix64_matches_the_published_sequence():
    # the first outputs of splitmix64 seeded with 0 (Vigna's reference code, also numpy's SeedSequence docs)
    assert splitmix64(0) == 0xE220A8397B1DCDAF == ref_splitmix64(0)
    assert splitmix64(0x9E3779B97F4A7C15) == 0x6E789E6AA1B965F4 == ref_splitmix64(0x9E3779B97F4A7C15)
    for x in (1, 12345, M64, 1 << 63):
        assert splitmix64(x) == ref_splitmix64(x)


def test_sample_seed_chains_splitmix_and_fits_63_bits():
    h = ref_splitmix64(7)
    for k in (3, 11, 2):
        h = ref_splitmix64(h ^ k)
    assert sample_seed(7, 3, 11, 2) == h & ((1 << 63) - 1)
    seeds = {sample_seed(0, e, i) for e in range(4) for i in range(500)}
    assert len(seeds) == 2000 and max(seeds) < 1 << 63  # distinct for distinct keys
    a, b = torch_generator(5, 1, 2), torch_generator(5, 1, 2)
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))


@pytest.mark.parametrize("stream", [STREAM_AUGMENT, STREAM_MASK, STREAM_NOISE, 2011])
def test_counter_bits_equal_the_naive_reference(stream):
    seeds = [0, 1, 0xDEADBEEF, (1 << 62) - 1, sample_seed(3, 1, 4)]
    bits = counter_bits(torch.tensor(seeds, dtype=torch.int64), (3, 5), stream)
    assert bits.shape == (5, 3, 5) and bits.dtype == torch.int64
    for i, s in enumerate(seeds):
        for c in range(15):
            assert int(bits[i].reshape(-1)[c]) == ref_bits(s, c, stream), (s, c)


def test_draws_are_pure_functions_of_seed_not_of_the_batch():
    seeds = torch.arange(100, 132, dtype=torch.int64) * 7919
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    u, u_perm = counter_uniform(seeds, (8,), STREAM_MASK), counter_uniform(seeds[perm], (8,), STREAM_MASK)
    assert torch.equal(u[perm], u_perm)
    assert torch.equal(counter_uniform(seeds[:3], (8,), STREAM_MASK), u[:3])
    # a larger shape extends the counter: its first entries are the smaller shape's draws
    assert torch.equal(counter_uniform(seeds, (16,), STREAM_MASK)[:, :8], u)


def test_uniform_and_normal_statistics_and_stream_independence():
    seeds = torch.arange(2000, dtype=torch.int64)
    u = counter_uniform(seeds, (64,), STREAM_MASK, dtype=torch.float64)
    assert 0.0 < float(u.min()) and float(u.max()) < 1.0
    n = u.numel()  # 128,000 draws: the mean's standard error is 0.0008, the variance's ~0.0002
    assert abs(float(u.mean()) - 0.5) < 0.004 and abs(float(u.var()) - 1 / 12) < 0.001
    z = counter_normal(seeds, (64,), STREAM_NOISE)
    assert abs(float(z.mean())) < 0.015 and abs(float(z.std()) - 1.0) < 0.015
    # fourth moment of a normal is 3: Box-Muller gets the tails right, not just the variance
    assert abs(float((z.double() ** 4).mean()) - 3.0) < 0.1
    v = counter_uniform(seeds, (64,), STREAM_SIGMA_OTHER := STREAM_NOISE + 7, dtype=torch.float64)
    corr = np.corrcoef(u.reshape(-1).numpy(), v.reshape(-1).numpy())[0, 1]
    assert abs(corr) < 0.015 and STREAM_SIGMA_OTHER != STREAM_MASK  # independent streams of one seed
    # bits are uniform over 32 bits: every byte value appears about equally often
    counts = np.bincount((counter_bits(seeds, (64,), STREAM_MASK) & 0xFF).reshape(-1).numpy(), minlength=256)
    chi2 = float(((counts - n / 256) ** 2 / (n / 256)).sum())
    assert chi2 < 340  # 255 degrees of freedom: the 99.9th percentile is ~330 plus margin


def test_normal_is_box_muller_of_the_reference_uniforms():
    seeds = torch.tensor([17, 1 << 40], dtype=torch.int64)
    z = counter_normal(seeds, (6,), STREAM_NOISE)
    for i, s in enumerate(seeds.tolist()):
        for c in range(6):
            u1 = (ref_bits(s, c, STREAM_NOISE * 2 + 1001) + 0.5) / 2 ** 32
            u2 = (ref_bits(s, c, STREAM_NOISE * 2 + 1002) + 0.5) / 2 ** 32
            ref = math.sqrt(-2.0 * math.log(np.float32(u1))) * math.cos(2.0 * math.pi * np.float32(u2))
            assert float(z[i, c]) == pytest.approx(ref, rel=1e-5, abs=1e-6)
