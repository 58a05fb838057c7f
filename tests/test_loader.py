"""Deterministic pretraining loader: step sampler, resume, ranks, workers, per-sample randomness."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from canbench.config import ConfigError
from canbench.data.augment import NUM_PHOTO_PARAMS, TwoViewTransform, ViewAugConfig, apply_photometric
from canbench.data.loader import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PretrainDataset,
    StepBatchSampler,
    build_pretrain_loader,
    collate_views,
    to_model_input,
)
from canbench.rng import sample_seed

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: see conftest.py


class _Images(Dataset):
    """Tiny deterministic images: pixel values encode the index."""

    def __init__(self, n: int, size: int = 12) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(1000 + i)
        return torch.randint(0, 256, (3, self.size, self.size), dtype=torch.uint8, generator=g), i % 3


def test_sampler_epochs_cover_each_index_once() -> None:
    s = StepBatchSampler(n=23, global_batch=5, seed=0, total_steps=8)
    assert s.steps_per_epoch == 4 and len(s) == 8
    batches = list(s)
    assert len(batches) == 8 and all(len(b) == 5 for b in batches)
    for epoch in (0, 1):
        items = [it for b in batches[4 * epoch: 4 * epoch + 4] for it in b]
        assert {e for e, _ in items} == {epoch}
        idx = [i for _, i in items]
        assert len(set(idx)) == 20 and all(0 <= i < 23 for i in idx)  # drop last: 3 left out per epoch
    assert [i for _, i in batches[0]] != [i for _, i in batches[4]]  # new permutation per epoch


def test_sampler_resume_equals_uninterrupted() -> None:
    full = list(StepBatchSampler(n=40, global_batch=8, seed=7, total_steps=17))
    for start in (0, 3, 5, 11, 16):
        resumed = list(StepBatchSampler(n=40, global_batch=8, seed=7, start_step=start, total_steps=17))
        assert resumed == full[start:]
    other_seed = list(StepBatchSampler(n=40, global_batch=8, seed=8, total_steps=17))
    assert other_seed != full


def test_sampler_rank_slices_concatenate_to_single_process() -> None:
    single = list(StepBatchSampler(n=50, global_batch=12, seed=1, total_steps=9))
    for world in (2, 3, 4):
        ranks = [list(StepBatchSampler(n=50, global_batch=12, seed=1, total_steps=9, rank=r, world_size=world))
                 for r in range(world)]
        for step in range(9):
            assert sum((ranks[r][step] for r in range(world)), []) == single[step]
            assert all(len(ranks[r][step]) == 12 // world for r in range(world))


def test_sampler_infinite_and_errors() -> None:
    it = iter(StepBatchSampler(n=10, global_batch=2, seed=0, start_step=100))
    assert next(it)[0][0] == 20  # epoch of step 100 with 5 steps per epoch
    with pytest.raises(TypeError, match="infinite"):
        len(StepBatchSampler(n=10, global_batch=2, seed=0))
    with pytest.raises(ConfigError, match="global_batch=12 must be a positive multiple of world_size=5"):
        StepBatchSampler(n=100, global_batch=12, seed=0, world_size=5)
    with pytest.raises(ConfigError, match="exceeds the data set size n=10"):
        StepBatchSampler(n=10, global_batch=16, seed=0)
    with pytest.raises(ConfigError, match="rank=2"):
        StepBatchSampler(n=10, global_batch=2, seed=0, rank=2, world_size=2)


def test_pretrain_item_depends_only_on_seed_epoch_index() -> None:
    cfg = ViewAugConfig(img_size=8)
    ds = PretrainDataset(_Images(10), TwoViewTransform(cfg), seed=3)
    a = ds[(2, 5)]
    ds[(0, 1)], ds[(7, 9)]  # other items in between change nothing
    b = PretrainDataset(_Images(10), TwoViewTransform(cfg), seed=3)[(2, 5)]
    assert torch.equal(a["crops"], b["crops"]) and torch.equal(a["photo"], b["photo"])
    assert a["seed"] == b["seed"] == sample_seed(3, 2, 5)
    assert (a["label"], a["index"], a["epoch"]) == (5 % 3, 5, 2)
    assert a["crops"].shape == (2, 3, 8, 8) and a["photo"].shape == (2, NUM_PHOTO_PARAMS)
    c = ds[(3, 5)]  # another epoch: new views and a new per-sample seed
    assert not torch.equal(a["photo"], c["photo"]) and a["seed"] != c["seed"]
    d = PretrainDataset(_Images(10), TwoViewTransform(cfg), seed=4)[(2, 5)]
    assert not torch.equal(a["photo"], d["photo"])


def test_collate_views_shapes() -> None:
    ds = PretrainDataset(_Images(6), TwoViewTransform(ViewAugConfig(img_size=8)), seed=0)
    batch = collate_views([ds[(0, i)] for i in range(4)])
    assert batch["crops"].shape == (4, 2, 3, 8, 8) and batch["crops"].dtype == torch.uint8
    assert batch["photo"].shape == (4, 2, NUM_PHOTO_PARAMS)
    for key in ("seed", "label", "index", "epoch"):
        assert batch[key].shape == (4,) and batch[key].dtype == torch.int64
    assert batch["index"].tolist() == [0, 1, 2, 3]


def _batches(loader) -> list[dict[str, torch.Tensor]]:
    return [b for b in loader]


def _assert_same(xs: list[dict[str, torch.Tensor]], ys: list[dict[str, torch.Tensor]]) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), k


def test_loader_workers_resume_and_ranks_agree() -> None:
    base, cfg = _Images(24), ViewAugConfig(img_size=8)
    kw = dict(base_dataset=base, aug_cfg=cfg, num_views=2, seed=11, global_batch=6, total_steps=6)
    ref = _batches(build_pretrain_loader(**kw))
    assert len(ref) == 6 and ref[0]["crops"].shape == (6, 2, 3, 8, 8)
    _assert_same(_batches(build_pretrain_loader(**kw, num_workers=2, persistent_workers=True)), ref)
    _assert_same(_batches(build_pretrain_loader(**kw, start_step=4)), ref[4:])
    halves = [_batches(build_pretrain_loader(**kw, rank=r, world_size=2)) for r in range(2)]
    for step in range(6):
        for k in ref[step]:
            assert torch.equal(torch.cat([halves[0][step][k], halves[1][step][k]]), ref[step][k])


def test_to_model_input() -> None:
    cfg = ViewAugConfig(img_size=8)
    ds = PretrainDataset(_Images(6), TwoViewTransform(cfg), seed=0)
    batch = collate_views([ds[(0, i)] for i in range(3)])
    x = to_model_input(batch, cfg, "cpu")
    assert x.shape == (2, 3, 3, 8, 8) and x.dtype == torch.float32  # (V, N, 3, S, S)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for v in range(2):
        for n in range(3):
            img = batch["crops"][n, v].float().div(255).unsqueeze(0)
            want = (apply_photometric(img, batch["photo"][n, v].unsqueeze(0), cfg)[0] - mean) / std
            torch.testing.assert_close(x[v, n], want, atol=1e-5, rtol=0)
