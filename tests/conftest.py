"""Shared fixtures: tiny configs so every method runs in well under a second on CPU."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

TINY = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2", "model.proj_hidden=64",
        "model.proj_out=16", "model.img_size=16", "model.patch_size=4", "data.builtin_size=64",
        "optim.batch_size=8", "train.log_every=1", "train.ckpt_every=2",
        "train.count_flops=false"]


@pytest.fixture(scope="module")
def single_thread():
    """Small tensors: one intra-op thread avoids OpenMP hand-off latency on a loaded 2-core machine
    (modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
