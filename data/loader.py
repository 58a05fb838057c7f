"""Deterministic pretraining loader: step-indexed batches, per-sample counter-based augmentation.

What a model sees at optimizer step ``s`` is a pure function of ``(seed, s)``: the global batch of step
``s`` is a slice of the permutation of epoch ``s // steps_per_epoch`` (seeded by ``(seed, epoch)``), and
each sample's views come from a generator seeded by ``(seed, epoch, index, STREAM_AUGMENT)``. So a
resumed run (``start_step``), any number of DataLoader workers and any number of ranks see the same
data; rank ``r`` takes the ``r``-th contiguous slice of each global batch.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from canbench.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError
from canbench.rng import STREAM_AUGMENT, sample_seed, torch_generator

from .augment import TwoViewTransform, ViewAugConfig, apply_photometric
from .datasets import read_or_replace

# Key of the data-order stream: the permutation of epoch e is seeded by (seed, STREAM_ORDER, e). It lies
# outside methods.rng's per-sample streams (1-4), which are keyed (seed, epoch, index, stream).
STREAM_ORDER = 101


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of ``epoch``: a permutation of range(n), int64 (n,)."""
    return torch.randperm(n, generator=torch_generator(seed, STREAM_ORDER, epoch))


class StepBatchSampler:
    """Yields this rank's slice of the global batch for each optimizer step, as [(epoch, index), ...].

    steps_per_epoch = n // global_batch (last partial batch dropped); step s reads items
    ``[(s % spe) * B, (s % spe + 1) * B)`` of epoch ``s // spe``'s permutation; rank r keeps
    ``[r * B / W, (r + 1) * B / W)`` of those. Iteration runs from ``start_step`` to ``total_steps``
    (forever when None).
    """

    def __init__(self, n: int, global_batch: int, seed: int, start_step: int = 0,
                 total_steps: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"StepBatchSampler rank={rank} must be in [0, world_size={world_size})")
        if global_batch < 1 or global_batch % world_size:
            raise ConfigError(f"StepBatchSampler global_batch={global_batch} must be a positive multiple of "
                              f"world_size={world_size}")
        if global_batch > n:
            raise ConfigError(f"StepBatchSampler global_batch={global_batch} exceeds the data set size n={n}")
        if start_step < 0:
            raise ConfigError(f"StepBatchSampler start_step={start_step} must be >= 0")
        if total_steps is not None and total_steps < start_step:
            raise ConfigError(f"StepBatchSampler total_steps={total_steps} < start_step={start_step}")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.steps_per_epoch = n // global_batch
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:  # one permutation per epoch, cached
            self._perm, self._perm_epoch = epoch_permutation(self.n, self.seed, epoch), epoch
        return self._perm

    def batch_for_step(self, step: int) -> list[tuple[int, int]]:
        """This rank's [(epoch, index)] for optimizer step ``step``."""
        epoch, k = divmod(step, self.steps_per_epoch)
        lo = k * self.global_batch + self.rank * self.local_batch
        idx = self._permutation(epoch)[lo:lo + self.local_batch].tolist()
        return [(epoch, i) for i in idx]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while self.total_steps is None or step < self.total_steps:
            yield self.batch_for_step(step)
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("StepBatchSampler with total_steps=None is infinite and has no length")
        return self.total_steps - self.start_step


class PretrainDataset(Dataset):
    """``ds[(epoch, index)]`` -> views of ``base[index]`` drawn from the per-sample generator. An unreadable image
    is replaced by another sample (:func:`.datasets.read_or_replace`, a pure function of the key), and its path
    travels in the item's ``bad`` list (the run counts them, :class:`.datasets.BadImages`)."""

    def __init__(self, base: Dataset, transform: TwoViewTransform, seed: int) -> None:
        self.base, self.transform, self.seed = base, transform, seed

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, index = int(key[0]), int(key[1])
        (img, label), bad = read_or_replace(self.base.__getitem__, len(self.base), self.seed, epoch, index)
        g = torch_generator(self.seed, epoch, index, STREAM_AUGMENT)
        crops, photo = self.transform(img, g)  # (V, 3, S, S) uint8, (V, K) float32
        return {"crops": crops, "photo": photo, "seed": sample_seed(self.seed, epoch, index),
                "label": int(label), "index": index, "epoch": epoch, "bad": bad}


def collate_ids(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The per-sample integers every pretraining batch carries: seed, label, index, epoch (int64 tensors); and,
    only when some sample replaced an unreadable file, ``bad``: those files' paths."""
    out: dict[str, Any] = {k: torch.tensor([it[k] for it in items], dtype=torch.int64)
                           for k in ("seed", "label", "index", "epoch")}
    bad = [p for it in items for p in it.get("bad", ())]
    if bad:
        out["bad"] = bad
    return out


def collate_views(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """List of :class:`PretrainDataset` items -> batched tensors (crops (N, V, 3, S, S) uint8, photo (N, V, K))."""
    return {"crops": torch.stack([it["crops"] for it in items]),
            "photo": torch.stack([it["photo"] for it in items]), **collate_ids(items)}


def build_pretrain_loader(base_dataset: Dataset, aug_cfg: ViewAugConfig, num_views: int, seed: int,
                          global_batch: int, start_step: int = 0, total_steps: int | None = None,
                          rank: int = 0, world_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                          persistent_workers: bool = False, prefetch_factor: int | None = 2) -> DataLoader:
    """DataLoader yielding :func:`collate_views` batches, one per optimizer step from ``start_step``."""
    sampler = StepBatchSampler(len(base_dataset), global_batch, seed, start_step, total_steps, rank, world_size)
    ds = PretrainDataset(base_dataset, TwoViewTransform(aug_cfg, num_views), seed)
    extra: dict[str, Any] = {}
    if num_workers > 0:
        extra = {"persistent_workers": persistent_workers, "prefetch_factor": prefetch_factor}
    return DataLoader(ds, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_views,
                      pin_memory=pin_memory, **extra)


def to_model_input(batch: dict[str, torch.Tensor], aug_cfg: ViewAugConfig, device: torch.device | str,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 crops (N, V, 3, S, S) + photo (N, V, K) -> normalised float views (V, N, 3, S, S) on ``device``."""
    crops = batch["crops"].to(device, non_blocking=True)
    photo = batch["photo"].to(device, non_blocking=True)
    n, v, c, h, w = crops.shape
    x = crops.transpose(0, 1).reshape(v * n, c, h, w).float().div_(255.0)  # view-major (V*N, 3, S, S)
    host = batch["photo"] if batch["photo"].device.type == "cpu" else None  # as drawn by the workers
    x = apply_photometric(x, photo.transpose(0, 1).reshape(v * n, -1), aug_cfg,
                          packed_host=None if host is None else host.transpose(0, 1).reshape(v * n, -1))
    m, s = _mean_std(tuple(mean), tuple(std), x.dtype, x.device)
    return x.sub_(m).div_(s).view(v, n, c, h, w)


@functools.lru_cache(maxsize=16)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalisation constants, built once per device (a blocking host->device copy otherwise each step)."""
    m = torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)
    return m, s
