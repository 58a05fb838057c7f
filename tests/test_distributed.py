"""Two gloo ranks: gathered InfoNCE (and global BN) equal the single-process values on the whole batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from canbench.methods.heads import ProjectionHead
from canbench.methods.losses import info_nce


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, u1: torch.Tensor, u2: torch.Tensor, feats: torch.Tensor,
            head_state: dict, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = u1.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        a = u1[sl].clone().requires_grad_(True)
        b = u2[sl].clone().requires_grad_(True)
        loss = info_nce(a, b, 0.1)
        # DDP averages gradients over ranks; emulate that on the local grads
        loss.backward()
        grads = torch.cat([a.grad, b.grad]) / world
        all_loss = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(all_loss, loss.detach())
        head = ProjectionHead(8, 16, 4)
        head.load_state_dict(head_state)
        z = head(feats[sl])
        all_z = [torch.zeros_like(z) for _ in range(world)]
        dist.all_gather(all_z, z.detach())
        out[rank] = {"loss": torch.stack(all_loss), "grads": grads, "z": torch.cat(all_z)}
    finally:
        dist.destroy_process_group()


def test_gathered_info_nce_equals_single_process():
    g = torch.Generator().manual_seed(0)
    u1 = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    u2 = F.normalize(torch.randn(8, 6, generator=g), dim=-1)
    feats = torch.randn(8, 8, generator=g)
    torch.manual_seed(0)
    head = ProjectionHead(8, 16, 4)
    ref_z = head(feats).detach()  # BN over the whole batch of 8
    a, b = u1.clone().requires_grad_(True), u2.clone().requires_grad_(True)
    ref = info_nce(a, b, 0.1)
    ref.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), u1, u2, feats, head.state_dict(), out), nprocs=2, join=True)
        res = dict(out)
    assert res[0]["loss"].mean().item() == pytest.approx(ref.item(), rel=1e-6)
    # gradient of each rank's local rows (after DDP-style averaging) equals the single-process gradient
    for rank in range(2):
        sl = slice(rank * 4, (rank + 1) * 4)
        torch.testing.assert_close(res[rank]["grads"], torch.cat([a.grad[sl], b.grad[sl]]), atol=1e-6, rtol=1e-5)
    # projection-head BatchNorm uses global batch statistics, so 2 ranks x 4 == 1 process x 8
    torch.testing.assert_close(res[0]["z"], ref_z, atol=1e-5, rtol=1e-4)
