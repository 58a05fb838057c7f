"""JPEG fast path (data/gpu_pipeline.py) against the reference loader, on CPU (and CUDA if present)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import PIL.Image
import pytest
import torch
from helpers import JPEG_SIZES, gradient_image, write_jpeg_tree
from scipy import stats
from torchvision.io import encode_jpeg, encode_png

from canbench.config import ConfigError
from canbench.data.augment import (
    COL_BLUR,
    COL_BRIGHTNESS,
    COL_CONTRAST,
    COL_FLIP,
    COL_GRAY,
    COL_HUE,
    COL_JITTER,
    COL_ORDER,
    COL_SATURATION,
    COL_SIGMA,
    TwoViewTransform,
    ViewAugConfig,
    crop_resize,
    sample_crop,
)
from canbench.data.datasets import build_imagefolder
from canbench.data.gpu_pipeline import (
    JpegViewDataset,
    NotAJpegError,
    build_jpeg_loader,
    build_jpeg_pretrain_loader,
    crop_resize_batch,
    decode_batch,
    imagefolder_files,
    jpeg_info,
    jpeg_to_model_input,
    sample_view_params,
)
from canbench.data.loader import build_pretrain_loader, to_model_input
from canbench.rng import torch_generator

# torchvision.io's decoders are deprecated in favour of TorchCodec (0.29); they are what both paths use
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

SIZES = JPEG_SIZES
_image = gradient_image


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory) -> Path:
    return write_jpeg_tree(tmp_path_factory.mktemp("jpegs"))


# ---- header parsing ---------------------------------------------------------------------------------


def test_jpeg_info_reads_size_without_decoding():
    for h, w in [(40, 56), (7, 300), (333, 9)]:
        info = jpeg_info(encode_jpeg(_image(h, w, 0)))
        assert (info.height, info.width, info.components, info.precision) == (h, w, 3, 8)
        assert info.gpu_decodable
    gray = jpeg_info(encode_jpeg(_image(20, 30, 0)[:1]))
    assert (gray.height, gray.width, gray.components) == (20, 30, 1) and gray.gpu_decodable


def test_jpeg_info_flags_cmyk_and_progressive():
    buf = io.BytesIO()
    PIL.Image.new("CMYK", (31, 17), (10, 20, 30, 40)).save(buf, format="JPEG")
    cmyk = jpeg_info(buf.getvalue())
    assert (cmyk.height, cmyk.width, cmyk.components) == (17, 31, 4) and not cmyk.gpu_decodable
    buf = io.BytesIO()
    PIL.Image.new("RGB", (25, 19), (200, 10, 30)).save(buf, format="JPEG", progressive=True)
    prog = jpeg_info(buf.getvalue())
    assert (prog.height, prog.width, prog.sof) == (19, 25, 0xC2) and prog.gpu_decodable


def test_jpeg_info_rejects_non_jpeg_and_truncated():
    with pytest.raises(NotAJpegError, match="start-of-image"):
        jpeg_info(encode_png(_image(8, 8, 0)))
    data = encode_jpeg(_image(16, 16, 0)).numpy().tobytes()
    with pytest.raises(NotAJpegError, match="truncated"):
        jpeg_info(data[:20])


# ---- same views as the reference --------------------------------------------------------------------


def test_sample_view_params_equals_two_view_transform():
    """Same generator -> the reference's exact crops (via the same crop_resize) and photometric rows."""
    cfg = ViewAugConfig(img_size=24)
    img = _image(47, 63, 1)
    for seed in range(20):
        ref_crops, ref_photo = TwoViewTransform(cfg, 2)(img, torch_generator(seed, 0, seed))
        boxes, photo = sample_view_params(torch_generator(seed, 0, seed), 47, 63, cfg, 2)
        assert torch.equal(photo, ref_photo)
        for v in range(2):
            assert torch.equal(crop_resize(img, tuple(boxes[v].tolist()), 24, cfg.interpolation), ref_crops[v])


@pytest.mark.parametrize("kind", ["simclr", "mae"])
def test_fast_path_matches_reference_loader(jpeg_root, kind):
    aug = ViewAugConfig(img_size=24, kind=kind)
    ref = build_pretrain_loader(build_imagefolder(jpeg_root, "train"), aug, 2, seed=3, global_batch=6,
                                total_steps=3)
    files, labels = imagefolder_files(jpeg_root, "train")
    fast = build_jpeg_pretrain_loader(files, aug, 2, seed=3, global_batch=6, total_steps=3, labels=labels)
    n_batches = n_pixels = 0
    for a, b in zip(ref, fast):
        n_batches += 1
        n_pixels += len(b["pixels"])
        for key in ("seed", "index", "epoch", "label", "photo"):
            assert torch.equal(a[key], b[key]), key
        images = decode_batch(b, "cpu")
        crops = crop_resize_batch(images, b["boxes"], 24, aug.interpolation, "interpolate")
        diff = (crops.int() - a["crops"].int()).abs()
        # same geometry; the reference resizes uint8 in fixed point (float here): 1-2 levels apart at most
        assert diff.max() <= 2 and diff.float().mean() < 0.25
        va, vb = to_model_input(a, aug, "cpu"), jpeg_to_model_input(b, aug, "cpu")
        assert va.shape == vb.shape == (2, 6, 3, 24, 24)
        assert (va - vb).abs().mean() < 0.01  # photometric ops on crops at most 1 level apart
    assert n_batches == 3 and n_pixels > 0  # the PNG went through the worker-decode fallback


def test_roi_align_resize_is_close_to_reference(jpeg_root):
    aug = ViewAugConfig(img_size=24)
    files, _ = imagefolder_files(jpeg_root, "train")
    batch = next(iter(build_jpeg_pretrain_loader(files, aug, 2, seed=0, global_batch=8, total_steps=1)))
    images = decode_batch(batch, "cpu")
    exact = crop_resize_batch(images, batch["boxes"], 24, "bilinear", "interpolate").float()
    roi = crop_resize_batch(images, batch["boxes"], 24, "bilinear", "roi_align").float()
    assert (exact - roi).abs().mean() < 2.0  # levels of 255: area averaging vs the antialias filter
    with pytest.raises(ConfigError, match="bicubic"):
        crop_resize_batch(images, batch["boxes"], 24, "bicubic", "roi_align")
    with pytest.raises(ConfigError, match="'nearest'"):
        crop_resize_batch(images, batch["boxes"], 24, "bilinear", "nearest")


def test_non_jpeg_files_are_decoded_in_the_worker(jpeg_root):
    files, labels = imagefolder_files(jpeg_root, "train")
    ds = JpegViewDataset(files, labels, ViewAugConfig(img_size=16), 2, seed=0)
    png = [i for i, f in enumerate(files) if f.endswith(".png")][0]
    item = ds[(0, png)]
    assert not item["encoded"] and item["data"].shape == (3, 44, 52)
    item = ds[(0, 0)]
    assert item["encoded"] and item["data"].ndim == 1


def test_build_jpeg_loader_yields_model_inputs(jpeg_root):
    aug = ViewAugConfig(img_size=16)
    batches = list(build_jpeg_loader(jpeg_root, aug, num_views=1, seed=0, global_batch=4, total_steps=2,
                                     num_workers=0, device="cpu"))
    assert len(batches) == 2
    for b in batches:
        assert b["views"].shape == (1, 4, 3, 16, 16) and b["views"].dtype == torch.float32
        assert torch.isfinite(b["views"]).all() and b["seed"].shape == (4,)
    with pytest.raises(ConfigError, match="resize='bogus'"):
        next(build_jpeg_loader(jpeg_root, aug, 1, 0, 4, 1, 0, "cpu", resize="bogus"))


# ---- same distributions -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drawn(jpeg_root):
    """Boxes and photometric rows of 600 samples x 2 views through the worker path (header-read size)."""
    files, _ = imagefolder_files(jpeg_root, "train")
    ds = JpegViewDataset(files, None, ViewAugConfig(img_size=16), 2, seed=7)
    idx = 4  # (61, 41): taller than wide, so a swapped height/width would show
    items = [ds[(epoch, idx)] for epoch in range(600)]
    return {"boxes": torch.cat([it["boxes"] for it in items]), "photo": torch.cat([it["photo"] for it in items]),
            "hw": SIZES[idx]}


def _binomial_ok(values: torch.Tensor, p: float) -> None:
    n = values.numel()
    assert abs(values.float().mean().item() - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9


def test_crop_distribution_matches_reference_sampler(drawn):
    h, w = drawn["hw"]
    boxes = drawn["boxes"]
    top, left, ch, cw = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
    cfg = ViewAugConfig(img_size=16)
    g = torch.Generator().manual_seed(12345)  # independent draws of the reference geometric sampler
    ref = torch.tensor([sample_crop(g, h, w, cfg.crop_scale, cfg.crop_ratio) for _ in range(len(boxes))])
    scale, ref_scale = (ch * cw).double() / (h * w), (ref[:, 2] * ref[:, 3]).double() / (h * w)
    aspect, ref_aspect = (cw / ch).double().log(), (ref[:, 3] / ref[:, 2]).double().log()
    assert stats.ks_2samp(scale.numpy(), ref_scale.numpy()).pvalue > 1e-3
    assert stats.ks_2samp(aspect.numpy(), ref_aspect.numpy()).pvalue > 1e-3
    assert stats.ks_2samp(top.numpy(), ref[:, 0].numpy()).pvalue > 1e-3
    assert scale.min() > 0.06 and scale.max() <= 1.0  # (0.08, 1) up to rounding to whole pixels


def test_photometric_distribution(drawn):
    p = drawn["photo"]
    cfg = ViewAugConfig(img_size=16)
    _binomial_ok(p[:, COL_FLIP], cfg.flip_p)
    _binomial_ok(p[:, COL_JITTER], cfg.jitter_p)
    _binomial_ok(p[:, COL_GRAY], cfg.gray_p)
    _binomial_ok(p[:, COL_BLUR], cfg.blur_p)
    s = cfg.jitter_strength
    for col, lo, hi in [(COL_BRIGHTNESS, 1 - 0.8 * s, 1 + 0.8 * s), (COL_CONTRAST, 1 - 0.8 * s, 1 + 0.8 * s),
                        (COL_SATURATION, 1 - 0.8 * s, 1 + 0.8 * s), (COL_HUE, -0.2 * s, 0.2 * s),
                        (COL_SIGMA, *cfg.blur_sigma)]:
        x = p[:, col].double()
        assert x.min() >= lo and x.max() <= hi
        assert stats.kstest(((x - lo) / (hi - lo)).numpy(), "uniform").pvalue > 1e-3, col
    order = p[:, COL_ORDER].long()
    assert torch.equal(order.sort(dim=1).values, torch.arange(4).expand_as(order))  # a permutation
    first = torch.bincount(order[:, 0], minlength=4).float() / len(order)
    assert (first - 0.25).abs().max() < 4 * math.sqrt(0.25 * 0.75 / len(order))


# ---- CUDA (skipped without a GPU) -------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_decode_and_augment_match_cpu(jpeg_root):
    aug = ViewAugConfig(img_size=24)
    files, _ = imagefolder_files(jpeg_root, "train")
    batch = next(iter(build_jpeg_pretrain_loader(files, aug, 2, seed=0, global_batch=8, total_steps=1)))
    cpu = jpeg_to_model_input(batch, aug, "cpu")
    gpu = jpeg_to_model_input(batch, aug, "cuda")
    assert gpu.device.type == "cuda" and gpu.shape == cpu.shape
    assert (gpu.cpu() - cpu).abs().mean() < 0.03  # nvJPEG vs libjpeg IDCT, float vs fixed-point resize


@pytest.mark.gpu
def test_cuda_prefetching_loader_matches_cpu(jpeg_root):
    aug = ViewAugConfig(img_size=24)
    kw = dict(num_views=2, seed=1, global_batch=4, total_steps=2, num_workers=0)
    cpu = list(build_jpeg_loader(jpeg_root, aug, device="cpu", **kw))
    gpu = list(build_jpeg_loader(jpeg_root, aug, device="cuda", **kw))
    assert len(cpu) == len(gpu) == 2
    for a, b in zip(cpu, gpu):
        assert torch.equal(a["seed"], b["seed"].cpu())
        assert (a["views"] - b["views"].cpu()).abs().mean() < 0.03
