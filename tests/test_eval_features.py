"""Feature extraction: dataset order, pooling, exact non-padded sharding (gloo, 2 ranks)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from canbench.evaluation.features import (
    ContiguousShardSampler,
    check_exact_sharding,
    encoder_pooling,
    extract_features,
    gather_variable,
    make_eval_loader,
    shard_bounds,
)


class StandInEncoder(torch.nn.Module):
    """The encoder contract without timm (cheap to import in spawned ranks): patch tokens, norm, avg pool."""

    embed_dim = 16
    num_prefix_tokens = 0

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Conv2d(3, 16, 8, 8)
        self.norm = torch.nn.LayerNorm(16)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (N, L, D)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = True) -> torch.Tensor:
        return x.mean(1)


def tiny_encoder(class_token: bool = False) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2, num_classes=0,
                             global_pool="avg", class_token=class_token, fc_norm=False).eval()


def toy_dataset(n: int = 7) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % 3)


@pytest.mark.parametrize("n,world", [(7, 2), (5, 3), (2, 4), (0, 2), (10, 1)])
def test_shard_bounds_cover_range_exactly_once(n, world):
    seen = []
    for r in range(world):
        s, e = shard_bounds(n, r, world)
        seen += list(range(s, e))
        assert len(ContiguousShardSampler(n, r, world)) == e - s
    assert seen == list(range(n))


@pytest.mark.parametrize("class_token", [False, True])
def test_extract_features_matches_direct_avg_pool(class_token):
    enc = tiny_encoder(class_token)
    ds = toy_dataset(7)
    feats, labels = extract_features(enc, make_eval_loader(ds, batch_size=3), "cpu")
    assert feats.shape == (7, 192) and feats.dtype == torch.float32
    assert torch.equal(labels, torch.arange(7) % 3)
    with torch.no_grad():
        tokens = enc.forward_features(ds.tensors[0])
        ref = tokens[:, enc.num_prefix_tokens:].mean(1)  # average over patch tokens only
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    assert encoder_pooling(enc) == "avg"


def test_extract_features_restores_training_mode():
    enc = tiny_encoder().train()
    extract_features(enc, make_eval_loader(toy_dataset(2), 2), "cpu")
    assert enc.training


def test_single_process_gather_is_identity_and_drop_last_refused():
    x = torch.arange(5.0)
    assert gather_variable(x) is x
    loader = DataLoader(toy_dataset(4), batch_size=3, drop_last=True)
    with pytest.raises(ValueError, match="drop_last"):
        check_exact_sharding(loader)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, n: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        enc = StandInEncoder()
        ds = toy_dataset(n)
        feats, labels = extract_features(enc, make_eval_loader(ds, batch_size=2), "cpu")
        padded = DataLoader(ds, batch_size=2, sampler=DistributedSampler(ds, world, rank, shuffle=False))
        try:
            check_exact_sharding(padded)
            refused = False
        except ValueError:
            refused = True
        torch.save((feats, labels, refused), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_gather_is_exact_without_padding(tmp_path):
    n, world = 5, 2  # shards of 2 and 3: DistributedSampler would pad to 6
    # fork: no re-import of torch in the children (CPU only, nothing CUDA is initialised)
    mp.start_processes(_worker, args=(world, _free_port(), n, str(tmp_path)), nprocs=world, join=True,
                       start_method="fork")
    ref, ref_labels = extract_features(StandInEncoder(), make_eval_loader(toy_dataset(n), 2), "cpu")
    for rank in range(world):
        feats, labels, refused = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert feats.shape == (n, 16)
        torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
        assert torch.equal(labels, ref_labels)
        assert refused, "a DistributedSampler loader must be refused under torch.distributed"
