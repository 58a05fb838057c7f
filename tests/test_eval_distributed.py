"""Distributed evaluation paths under gloo (2 forked CPU ranks): linear probe full mode, shift counting."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from canbench.evaluation.label_space import Top1
from canbench.evaluation.linear import run_linear
from canbench.evaluation.recipes import linear_config
from canbench.evaluation.shift import evaluate_set
from canbench.evaluation.shift_data import ShiftSet
from canbench.evaluation.transforms import eval_transform


class StandIn(torch.nn.Module):
    """Encoder contract without timm: patch tokens, norm, average pool."""

    embed_dim = 8
    num_prefix_tokens = 0

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 8, 8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward_features(self, x):
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))

    def forward_head(self, x, pre_logits=True):
        return x.mean(1)


class Blobs(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(n)
        self.targets = [i % 2 for i in range(n)]
        self.imgs = (torch.rand(n, 3, 16, 16, generator=g) * 60).to(torch.uint8)
        for i, t in enumerate(self.targets):
            self.imgs[i, t] += 150

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.imgs[i], self.targets[i]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        cfg = linear_config("smoke", mode="full", img_size=16, batch_size=8, epochs=2, eval_batch_size=3)
        out = run_linear(StandIn(), Blobs(20), Blobs(7), cfg)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
        torch.manual_seed(1)
        torch.nn.init.normal_(model[1].weight)
        res = evaluate_set(model, ShiftSet("toy", Blobs(7), Top1()), eval_transform(16, 1.0), batch_size=2)
        torch.save((out["metrics"], res), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_ranks_agree_and_count_every_sample_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules (CPU only, one thread each)
    mp.start_processes(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True, start_method="fork")
    (m0, r0), (m1, r1) = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert m0 == m1  # averaged head gradients and broadcast BN stats: both ranks hold the same head
    assert m0["steps"] == 2 * (20 // 8)  # per rank batch 4, DistributedSampler drop_last: 2 steps per epoch
    assert r0 == r1 and r0["n"] == 7 and r0["valid"] == 7  # shards of 3 and 4, summed: every image once
