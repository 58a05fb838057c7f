"""Frozen-encoder feature extraction with exact (never padded) distributed sharding.

``DistributedSampler`` pads the last shard by repeating samples, so every metric computed on its
output counts some test images twice. Evaluation here instead gives each rank a contiguous slice
of the index range (sizes may differ by one) and gathers variable-size shards back in rank order,
which reproduces the dataset order exactly.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from canbench.runtime import rank_world


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, end) of rank's contiguous shard of ``range(n)``; shards cover it exactly once."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside [0, {world_size})")
    return n * rank // world_size, n * (rank + 1) // world_size


class ContiguousShardSampler(Sampler[int]):
    """Rank r yields indices ``shard_bounds(len, r, world)`` in order: no padding, no shuffle."""

    def __init__(self, dataset_len: int, rank: int | None = None, world_size: int | None = None) -> None:
        r, w = rank_world()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        self.dataset_len = dataset_len
        self.start, self.end = shard_bounds(dataset_len, self.rank, self.world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


def gather_variable(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` (n_r, ...) along dim 0 in rank order; n_r may differ by rank."""
    rank, world = rank_world()
    if world == 1:
        return x
    # all_gather needs equal shapes: exchange sizes, pad to the max, gather, trim each shard
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    max_n = max(counts)
    padded = x.new_zeros((max_n, *x.shape[1:]))
    padded[: x.shape[0]] = x
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded.contiguous())
    return torch.cat([o[:c] for o, c in zip(out, counts)], dim=0)


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 0,
                     pin_memory: bool = False) -> DataLoader:
    """In-order loader over this rank's exact shard (the whole set on one process)."""
    sampler = ContiguousShardSampler(len(dataset))  # type: ignore[arg-type]
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=False, persistent_workers=False)


def check_exact_sharding(loader: DataLoader) -> None:
    """Refuse padded / shuffled / dropping loaders when results are gathered across ranks."""
    _, world = rank_world()
    if getattr(loader, "drop_last", False):
        raise ValueError("evaluation loader has drop_last=True: test samples would be skipped")
    if world > 1 and not isinstance(loader.sampler, ContiguousShardSampler):
        raise ValueError(f"distributed evaluation needs a ContiguousShardSampler (got "
                         f"{type(loader.sampler).__name__}); DistributedSampler pads and double-counts. "
                         "Build the loader with make_eval_loader().")


def encoder_pooling(encoder: nn.Module) -> str:
    """The pooling the encoder's ``forward_head`` applies, for fingerprints: "avg" or "cls"."""
    pool = getattr(encoder, "pool", None)  # canbench ViTEncoder: "avg" | "cls"
    if not isinstance(pool, str):  # timm: ``pool`` is a method, the setting is ``global_pool``
        pool = getattr(encoder, "global_pool", "avg")
    return {"token": "cls", "avg": "avg", "cls": "cls"}.get(pool, str(pool))


@torch.no_grad()
def extract_features(encoder: nn.Module, loader: DataLoader,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of every sample in dataset order: feats (N, D) float32 (CPU), labels (N,).

    Eval mode, no grad, bf16 autocast on CUDA only. Pooling is the encoder's own
    ``forward_head(tokens, pre_logits=True)`` (global average pool over patch tokens by default).
    Under torch.distributed each rank runs its exact shard and the shards are gathered, so every
    rank returns all N rows exactly once.
    """
    check_exact_sharding(loader)
    device = torch.device(device)
    was_training = encoder.training
    encoder.eval()
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                tokens = encoder.forward_features(images)  # (B, prefix + L, D)
                pooled = encoder.forward_head(tokens, pre_logits=True)  # (B, D)
            feats.append(pooled.float())
            labels.append(torch.as_tensor(targets).to(device))
    finally:
        encoder.train(was_training)
    dim = int(getattr(encoder, "embed_dim", 0))
    f = torch.cat(feats) if feats else torch.zeros(0, dim, device=device)
    y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    f, y = gather_variable(f), gather_variable(y)
    return f.cpu(), y.cpu()
