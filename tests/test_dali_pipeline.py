"""DALI input path (data/dali_pipeline.py) against the CPU reference, on DALI's CPU backend (and CUDA if present).

The DALI tests skip when NVIDIA DALI is not installed (it is an optional extra, not in ``.[test]``).
What the own device path's tests assert (tests/test_gpu_pipeline.py) is asserted here too: the same
parameters per (seed, epoch, index) (so the distribution tests there cover this path's parameters), the
same views as the reference loader up to decoding and resize rounding, and on CUDA the same views as on
the CPU. The photometric ops are also checked one by one against :func:`apply_photometric` on images that
need no resize, where only float rounding separates the two.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import JPEG_SIZES, gradient_image, write_jpeg_tree
from torchvision.io import encode_png

from canbench.config import ConfigError
from canbench.data.augment import COL_BLUR, COL_GRAY, ViewAugConfig, apply_photometric, sample_photometric
from canbench.data.datasets import build_imagefolder
from canbench.data.gpu_pipeline import JpegViewDataset, imagefolder_files
from canbench.data.loader import IMAGENET_MEAN, IMAGENET_STD, build_pretrain_loader, to_model_input
from canbench.rng import torch_generator

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

SIZES = JPEG_SIZES
_image = gradient_image


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip("nvidia.dali")


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> Path:
    return write_jpeg_tree(tmp_path_factory.mktemp("dali_jpegs"))


# ---- without DALI -------------------------------------------------------------------------------------


def test_missing_dali_is_a_config_error(monkeypatch):
    from canbench.data.dali_pipeline import import_dali

    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"data.pipeline=dali needs NVIDIA DALI.*canbench\[dali\]"):
        import_dali()


def test_dali_config_is_checked():
    from canbench.train.recipe import build_config

    with pytest.raises(ConfigError, match="data.pipeline='webdataset'"):
        build_config("simclr", "smoke", ["data.pipeline=webdataset"], validate_paths=False)
    with pytest.raises(ConfigError, match="data.pipeline=dali reads ImageFolder.*data.dataset='builtin'"):
        build_config("simclr", "smoke", ["data.pipeline=dali"], validate_paths=False)


# ---- same parameters as the own device path -----------------------------------------------------------


def test_worker_parameters_equal_the_device_path(dali, jpeg_root):
    """Every item's boxes, photometric rows and seed equal JpegViewDataset's; non-JPEGs travel as bytes."""
    from canbench.data.dali_pipeline import DaliViewDataset

    files, labels = imagefolder_files(jpeg_root, "train")
    aug = ViewAugConfig(img_size=16)
    own, ours = JpegViewDataset(files, labels, aug, 2, seed=7), DaliViewDataset(files, labels, aug, 2, seed=7)
    for epoch in range(3):
        for i in range(len(files)):
            a, b = own[(epoch, i)], ours[(epoch, i)]
            for key in ("boxes", "photo"):
                assert torch.equal(a[key], b[key]), key
            assert (a["seed"], a["label"]) == (b["seed"], b["label"])
            assert b["encoded"] and b["data"].ndim == 1  # bytes, also for the PNG
            assert a["encoded"] == files[i].endswith(".jpg")


# ---- same views as the reference ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["simclr", "mae"])
def test_dali_cpu_matches_reference_loader(dali, jpeg_root, kind):
    from canbench.data.dali_pipeline import DaliAugment, build_dali_pretrain_loader

    aug = ViewAugConfig(img_size=24, kind=kind)
    ref = build_pretrain_loader(build_imagefolder(jpeg_root, "train"), aug, 2, seed=3, global_batch=6,
                                total_steps=3)
    files, labels = imagefolder_files(jpeg_root, "train")
    loader = build_dali_pretrain_loader(files, aug, 2, seed=3, global_batch=6, total_steps=3, labels=labels)
    pipe = DaliAugment(aug, 2, 6, "cpu")
    n = 0
    for a, b in zip(ref, loader):
        n += 1
        for key in ("seed", "index", "epoch", "label", "photo"):
            assert torch.equal(a[key], b[key]), key
        va, vb = to_model_input(a, aug, "cpu"), pipe(b)
        assert va.shape == vb.shape == (2, 6, 3, 24, 24) and vb.dtype == torch.float32
        # libjpeg in both; DALI's antialiased resize vs torchvision's: about one level of 255 apart on average
        assert (va - vb).abs().mean() < 0.01
    assert n == 3


def test_dali_photometric_ops_equal_apply_photometric(dali, tmp_path):
    """S x S PNGs with full-image boxes (no resize, lossless): each op, its order and parameters as the reference."""
    from canbench.data.dali_pipeline import DaliAugment

    s, n = 20, 24
    cfg = ViewAugConfig(img_size=s, jitter_p=1.0, gray_p=0.3, blur_p=0.5)
    images = [_image(s, s, i) for i in range(n)]
    photo = sample_photometric(torch_generator(5, 0, 0), n, cfg)  # (n, K): every order, gray and blur mixed
    assert 0 < photo[:, COL_GRAY].sum() < n and 0 < photo[:, COL_BLUR].sum() < n
    pngs = [encode_png(img) for img in images]
    batch = {"jpeg_bytes": torch.cat(pngs), "jpeg_lengths": torch.tensor([p.numel() for p in pngs]),
             "encoded": torch.ones(n, dtype=torch.bool), "boxes": torch.tensor([[[0, 0, s, s]]] * n),
             "photo": photo[:, None], "seed": torch.arange(n)}
    got = DaliAugment(cfg, 1, n, "cpu")(batch)[0]  # (n, 3, S, S)
    x = apply_photometric(torch.stack(images).float() / 255.0, photo, cfg)
    want = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert (got - want).abs().max() < 1e-4  # float rounding only (a wrong jitter order is off by > 1)


def test_dali_end_to_end_throughput_on_cpu(dali, jpeg_root, tiny_overrides):
    """``--data dali:/path`` through PretrainData (the trainer's builder) on the CPU backend."""
    from canbench.benchmarks.perf.throughput import ThroughputOptions, run_throughput_suite
    from canbench.train.recipe import build_config

    cfgs = {"simclr": build_config("simclr", "smoke", tiny_overrides, validate_paths=False)}
    spec = f"dali:{jpeg_root / 'train'}"
    opts = ThroughputOptions(batch=4, device="cpu", steps=2, warmup=0, data=spec, workers=0, data_only=True)
    (row,) = run_throughput_suite(cfgs, opts)["rows"]
    assert row["data"] == spec and row["data_only"] and row["img_per_s"] > 0


# ---- CUDA (skipped without a GPU) ---------------------------------------------------------------------


@pytest.mark.gpu
def test_dali_cuda_matches_cpu(dali, jpeg_root):
    """Mixed decoder (nvJPEG) and GPU ops against the CPU backend, and against the reference loader."""
    from canbench.data.dali_pipeline import DaliAugment, build_dali_pretrain_loader, dali_model_inputs

    aug = ViewAugConfig(img_size=24)
    files, labels = imagefolder_files(jpeg_root, "train")
    kw = dict(num_views=2, seed=1, global_batch=6, total_steps=2, labels=labels)
    cpu = [DaliAugment(aug, 2, 6, "cpu")(b) for b in build_dali_pretrain_loader(files, aug, **kw)]
    gpu = list(dali_model_inputs(iter(build_dali_pretrain_loader(files, aug, **kw)), DaliAugment(aug, 2, 6, "cuda")))
    ref = [to_model_input(b, aug, "cpu") for b in build_pretrain_loader(build_imagefolder(jpeg_root, "train"), aug,
                                                                       2, seed=1, global_batch=6, total_steps=2)]
    assert len(gpu) == len(cpu) == len(ref) == 2
    for c, g, r in zip(cpu, gpu, ref):
        assert g["views"].device.type == "cuda" and g["views"].shape == c.shape
        assert (g["views"].cpu() - c).abs().mean() < 0.03  # nvJPEG vs libjpeg IDCT
        assert (g["views"].cpu() - r).abs().mean() < 0.03
