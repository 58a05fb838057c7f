"""Exact accumulation: ``optim.accum_steps = k`` gives the loss, every gradient and the projection head's BatchNorm
statistics of one step on the whole batch, for CAN and SimCLR (gradient cache), on one process and on two gloo
ranks; MAE keeps plain accumulation; the two forwards of a micro-batch see the same inputs."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from canbench.runtime import DistInfo
from canbench.train.recipe import build_config
from canbench.train.step import TrainStep

TINY = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
        "model.proj_out=16", "model.img_size=16", "model.patch_size=4", "data.builtin_size=64"]
N = 16


def _batch(n: int = N, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"views": torch.randn(2, n, 3, 16, 16, generator=g), "seed": torch.arange(100, 100 + n)}


def _cfg(method: str, k: int, *extra: str, batch: int = N):
    return build_config(method, "smoke", TINY + [f"optim.batch_size={batch}", f"optim.accum_steps={k}", *extra])


def _backward(method: str, k: int, batch: dict, *extra: str, world: int = 1) -> dict:
    step = TrainStep(_cfg(method, k, *extra, batch=N // world * world), torch.device("cpu"), DistInfo(
        dist.get_rank() if world > 1 else 0, world))
    terms = step.backward(batch)
    m = step.method
    return {"terms": {t: torch.stack(v).mean() for t, v in terms.items()},
            "grads": {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None},
            "params": {n for n, _ in m.named_parameters()},
            "buffers": {n: b.clone() for n, b in m.named_buffers() if "running" in n}}


def _close(a: dict, b: dict) -> None:
    assert a["grads"].keys() == b["grads"].keys() == a["params"]  # every parameter has its gradient
    for t in b["terms"]:
        torch.testing.assert_close(a["terms"][t], b["terms"][t], rtol=1e-5, atol=1e-6, msg=t)
    for n in b["grads"]:
        torch.testing.assert_close(a["grads"][n], b["grads"][n], rtol=1e-4, atol=1e-5)  # ~1e-6 noise near 0
    assert b["buffers"] and a["buffers"].keys() == b["buffers"].keys()
    for n in b["buffers"]:
        torch.testing.assert_close(a["buffers"][n], b["buffers"][n], rtol=1e-5, atol=1e-6, msg=n)


@pytest.mark.parametrize("method,extra", [("can", ()), ("simclr", ()), ("simclr", ("method.mask_ratio=0.5",)),
                                          ("can", ("method.noise_mode=none", "method.sigma_max=0"))])
@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_step_equals_one_step_on_the_whole_batch(method, extra, k):
    batch = _batch()
    whole = _backward(method, 1, batch, *extra)
    _close(_backward(method, k, batch, *extra), whole)
    # the whole batch's contrastive loss, not the micro-batches' (the old accumulation's 4.44-5.13 vs 5.85)
    torch.testing.assert_close(_backward(method, k, batch, *extra)["terms"]["infonce"], whole["terms"]["infonce"])


def test_plain_accumulation_was_a_different_loss_and_mae_keeps_it():
    """What the gradient cache fixes: InfoNCE over a micro-batch has fewer negatives (a lower loss). MAE has no
    batch-coupled term: plain accumulation is already exact."""
    from canbench.methods import build_method

    batch = _batch()
    net = build_method(_cfg("simclr", 1))
    with torch.no_grad():
        whole = net(batch)["infonce"]
        micro = net({"views": batch["views"][:, :4], "seed": batch["seed"][:4]})["infonce"]
    assert micro < whole - 0.5
    step = TrainStep(_cfg("mae", 4), torch.device("cpu"))
    assert not step.cached
    a, b = _backward("mae", 4, batch), _backward("mae", 1, batch)
    for n in b["grads"]:
        torch.testing.assert_close(a["grads"][n], b["grads"][n], rtol=1e-4, atol=1e-5)  # ~1e-6 noise near 0
    assert TrainStep(_cfg("can", 2, "method.l_nce=0"), torch.device("cpu")).cached is False
    assert TrainStep(_cfg("can", 2), torch.device("cpu")).cached is True


def test_both_passes_of_a_micro_batch_see_the_same_inputs_with_drop_path():
    """Masks and noise are functions of per-sample seeds; drop path draws from the torch RNG, whose state the
    gradient cache restores before each micro-batch's second pass."""
    step = TrainStep(_cfg("can", 2, "model.drop_path=0.2"), torch.device("cpu"))
    seen: list[torch.Tensor] = []
    inner = step.step_terms

    def record(micro, local=True):
        z, terms = inner(micro, local=local)
        seen.append(z.detach().clone())
        return z, terms

    step.step_terms = record
    before = torch.get_rng_state()
    step.backward(_batch())
    assert len(seen) == 4  # feature pass x 2 micro-batches, then graph pass x 2
    torch.testing.assert_close(seen[2], seen[0], rtol=0, atol=0)
    torch.testing.assert_close(seen[3], seen[1], rtol=0, atol=0)
    assert not torch.equal(seen[0], seen[1])
    assert not torch.equal(torch.get_rng_state(), before)  # the stream moves on as one pass of each would


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, method: str, k: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = _batch()
        n = N // world
        local = {"views": batch["views"][:, rank * n:(rank + 1) * n], "seed": batch["seed"][rank * n:(rank + 1) * n]}
        res = _backward(method, k, local, world=world)
        loss = res["terms"]["loss"].clone()
        dist.all_reduce(loss)
        res["terms"] = {"loss": loss / world}
        out[rank] = res
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["can", "simclr"])
def test_two_gloo_ranks_accumulating_equal_one_process_on_the_whole_batch(method):
    whole = _backward(method, 1, _batch())
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), method, 2, out), nprocs=2, join=True)
        res = dict(out)
    for rank in range(2):
        got = {**res[rank], "terms": res[rank]["terms"]}
        _close(got, {**whole, "terms": {"loss": whole["terms"]["loss"]}})
