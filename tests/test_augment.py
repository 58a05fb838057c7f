"""SimCLR/MAE view augmentation: sampler statistics, torchvision equivalence, determinism."""

from __future__ import annotations

import math

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from canbench.config import ConfigError
from canbench.data import augment as A
from canbench.data.augment import (
    NUM_PHOTO_PARAMS,
    TwoViewTransform,
    ViewAugConfig,
    apply_photometric,
    blur_kernel_size,
    sample_crop,
    sample_photometric,
    unpack_photometric,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: see conftest.py


def _binomial_ok(count: int, n: int, p: float, k: float = 4.0) -> bool:
    return abs(count - n * p) <= k * math.sqrt(n * p * (1 - p)) + 1e-9


# ----------------------------------------------------------------------------------------------------
# config


def test_blur_kernel_size_rounding() -> None:
    assert blur_kernel_size(224) == 23  # SimCLR: 22 -> 23
    assert blur_kernel_size(96) == 9  # floor 9 is odd: kept
    assert blur_kernel_size(32) == 3
    assert blur_kernel_size(16) == 3  # minimum 3
    assert blur_kernel_size(64, 0.0) == 3
    assert blur_kernel_size(100, 0.2) == 21  # 20 -> 21
    assert ViewAugConfig(img_size=224).blur_kernel_size == 23


def test_config_kind_defaults_and_validation() -> None:
    simclr, mae = ViewAugConfig(), ViewAugConfig(kind="mae")
    assert simclr.crop_scale == (0.08, 1.0) and simclr.jitter_p == 0.8 and simclr.gray_p == 0.2
    assert simclr.blur_p == 0.5 and simclr.interpolation == "bilinear"
    assert mae.crop_scale == (0.2, 1.0) and mae.jitter_p == mae.gray_p == mae.blur_p == 0.0
    assert mae.interpolation == "bicubic"
    assert ViewAugConfig(kind="mae", blur_p=0.3).blur_p == 0.3  # explicit values win
    with pytest.raises(ConfigError, match="kind='byol'"):
        ViewAugConfig(kind="byol")
    with pytest.raises(ConfigError, match="crop_scale"):
        ViewAugConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="gray_p=1.5"):
        ViewAugConfig(gray_p=1.5)
    with pytest.raises(ConfigError, match="jitter_strength"):
        ViewAugConfig(jitter_strength=3.0)


# ----------------------------------------------------------------------------------------------------
# geometric sampler


def test_sample_crop_matches_torchvision_distribution() -> None:
    h, w, n = 48, 64, 3000
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    g = torch.Generator().manual_seed(0)
    ours = np.array([sample_crop(g, h, w, scale, ratio) for _ in range(n)], dtype=np.float64)
    torch.manual_seed(0)
    img = torch.zeros(3, h, w)
    ref = np.array([RandomResizedCrop.get_params(img, list(scale), list(ratio)) for _ in range(n)], dtype=np.float64)
    for boxes in (ours, ref):
        top, left, ch, cw = boxes.T
        assert (top >= 0).all() and (left >= 0).all() and (top + ch <= h).all() and (left + cw <= w).all()
    area = lambda b: b[:, 2] * b[:, 3] / (h * w)
    log_aspect = lambda b: np.log(b[:, 3] / b[:, 2])
    a_ours = area(ours)
    assert a_ours.min() >= 0.06 and a_ours.max() <= 1.0  # [0.08, 1] up to rounding of the crop sides
    assert np.abs(log_aspect(ours)).max() <= math.log(4 / 3) + 0.15
    q = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    np.testing.assert_allclose(np.quantile(a_ours, q), np.quantile(area(ref), q), atol=0.05)
    np.testing.assert_allclose(np.quantile(log_aspect(ours), q), np.quantile(log_aspect(ref), q), atol=0.06)
    # log-aspect of accepted crops is roughly uniform on [log 3/4, log 4/3]: the middle half holds ~50%
    la = log_aspect(ours)
    mid = np.mean(np.abs(la) <= math.log(4 / 3) / 2)
    assert 0.4 < mid < 0.6


def test_sample_crop_fallback_and_positions() -> None:
    g = torch.Generator().manual_seed(1)
    # a 10x400 strip: no attempt fits, fallback = central crop clamped to the max ratio 4/3
    assert sample_crop(g, 10, 400, (0.5, 1.0), (3 / 4, 4 / 3)) == (0, (400 - 13) // 2, 10, 13)
    assert sample_crop(g, 400, 10, (0.5, 1.0), (3 / 4, 4 / 3)) == ((400 - 13) // 2, 0, 13, 10)
    tops = [sample_crop(g, 64, 64, (0.08, 0.08), (1.0, 1.0))[0] for _ in range(500)]
    assert min(tops) <= 5 and max(tops) >= 40  # positions spread over the image


# ----------------------------------------------------------------------------------------------------
# photometric sampler


def test_sample_photometric_statistics() -> None:
    n = 20000
    cfg = ViewAugConfig()
    t = sample_photometric(torch.Generator().manual_seed(0), n, cfg)
    assert t.shape == (n, NUM_PHOTO_PARAMS) and t.dtype == torch.float32
    p = unpack_photometric(t)
    for flag, prob in ((p.flip, 0.5), (p.jitter_apply, 0.8), (p.gray, 0.2), (p.blur_apply, 0.5)):
        assert _binomial_ok(int(flag.sum()), n, prob), (int(flag.sum()), prob)
    for f in (p.brightness, p.contrast, p.saturation):
        assert f.min() >= 0.2 and f.max() <= 1.8 and f.min() < 0.21 and f.max() > 1.79
        assert abs(float(f.mean()) - 1.0) < 0.02
    assert p.hue.min() >= -0.2 and p.hue.max() <= 0.2 and abs(float(p.hue.mean())) < 0.005
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0 and abs(float(p.sigma.mean()) - 1.05) < 0.02
    assert (p.order.sort(dim=1).values == torch.arange(4)).all()  # every row a permutation
    for pos in range(4):
        for op in range(4):
            assert _binomial_ok(int((p.order[:, pos] == op).sum()), n, 0.25)


def test_sample_photometric_mae_and_strength() -> None:
    p = unpack_photometric(sample_photometric(torch.Generator().manual_seed(0), 2000, ViewAugConfig(kind="mae")))
    assert not p.jitter_apply.any() and not p.gray.any() and not p.blur_apply.any()
    assert _binomial_ok(int(p.flip.sum()), 2000, 0.5)
    p = unpack_photometric(sample_photometric(torch.Generator().manual_seed(0), 2000,
                                              ViewAugConfig(jitter_strength=0.5)))
    assert p.brightness.min() >= 0.6 and p.brightness.max() <= 1.4 and p.hue.abs().max() <= 0.1


# ----------------------------------------------------------------------------------------------------
# batched photometric ops vs torchvision, per sample


def _reference(x: torch.Tensor, packed: torch.Tensor, cfg: ViewAugConfig) -> torch.Tensor:
    p = unpack_photometric(packed)
    k = blur_kernel_size(x.shape[-1], cfg.blur_kernel_frac)
    out = []
    for i in range(x.shape[0]):
        z = x[i]
        if p.flip[i]:
            z = TF.horizontal_flip(z)
        if p.jitter_apply[i] and cfg.jitter_p > 0:
            for op in p.order[i].tolist():
                if op == 0:
                    z = TF.adjust_brightness(z, float(p.brightness[i]))
                elif op == 1:
                    z = TF.adjust_contrast(z, float(p.contrast[i]))
                elif op == 2:
                    z = TF.adjust_saturation(z, float(p.saturation[i]))
                else:
                    z = TF.adjust_hue(z, float(p.hue[i]))
        if p.gray[i] and cfg.gray_p > 0:
            z = TF.rgb_to_grayscale(z, num_output_channels=3)
        if p.blur_apply[i] and cfg.blur_p > 0:
            z = TF.gaussian_blur(z, [k, k], [float(p.sigma[i])] * 2)
        out.append(z)
    return torch.stack(out)


def _test_images(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[0] = x[0, :1]  # gray pixels (r = g = b): hue undefined
    x[1] = (x[1] > 0.5).float()  # saturated extremes 0 / 1
    x[2, :, : size // 2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red, max shared by channels
    x[2, 1, size // 2:] = x[2, 0, size // 2:]  # r == g
    return x


@pytest.mark.parametrize("size", [32, 64])
def test_apply_photometric_matches_torchvision(size: int) -> None:
    cfg = ViewAugConfig(img_size=size)
    n = 40
    packed = sample_photometric(torch.Generator().manual_seed(size), n, cfg)
    packed[: n // 2, A.COL_JITTER] = 1.0  # plenty of jitter rows; all orders occur
    x = _test_images(n, size, seed=size)
    got = apply_photometric(x.clone(), packed, cfg)
    want = _reference(x, packed, cfg)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    assert got.min() >= 0 and got.max() <= 1


def test_apply_photometric_device_path_equals_subset_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The no-host-sync path used off CPU (compute all rows, select) gives the same result."""
    cfg = ViewAugConfig(img_size=32)
    packed = sample_photometric(torch.Generator().manual_seed(3), 24, cfg)
    x = _test_images(24, 32, seed=3)
    subset = apply_photometric(x, packed, cfg)
    monkeypatch.setattr(A, "_use_subsets", lambda t: False)
    full = apply_photometric(x, packed, cfg)
    torch.testing.assert_close(subset, full, atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", ["mixed", "all_jitter", "no_blur_cfg"])
def test_grouped_device_path_equals_per_row_reference(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a host copy of the parameters, rows are regrouped so hue and blur run on slices only: same
    result per row as the torchvision reference, in the caller's row order."""
    cfg = ViewAugConfig(img_size=32, blur_p=0.0) if case == "no_blur_cfg" else ViewAugConfig(img_size=32)
    n = 40
    packed = sample_photometric(torch.Generator().manual_seed(7), n, cfg)
    if case == "all_jitter":
        packed[:, A.COL_JITTER] = 1.0
    x = _test_images(n, 32, seed=7)
    monkeypatch.setattr(A, "_use_subsets", lambda t: False)  # the off-CPU branch, run on CPU
    calls: list[int] = []
    hue = A._adjust_hue
    monkeypatch.setattr(A, "_adjust_hue", lambda y, h: calls.append(y.shape[0]) or hue(y, h))
    got = apply_photometric(x.clone(), packed, cfg, packed_host=packed.clone())
    torch.testing.assert_close(got, _reference(x, packed, cfg), atol=2e-5, rtol=0)
    p = A.unpack_photometric(packed)
    assert sum(calls) == int(p.jitter_apply.sum())  # hue computed once per jittered row, not 4 x n
    with pytest.raises(ValueError, match=r"packed_host must be a CPU copy of packed \(40, \d+\)"):
        apply_photometric(x, packed, cfg, packed_host=packed[:3])


def test_hue_offsets_are_built_once_per_device() -> None:
    """A per-call ``torch.tensor(..., device=cuda)`` is a host sync; the constant is cached per device."""
    a = A._hue_offsets(torch.float32, torch.device("cpu"))
    assert a is A._hue_offsets(torch.float32, torch.device("cpu"))
    assert a.shape == (1, 3, 1, 1) and a.flatten().tolist() == [5.0, 3.0, 1.0]


@pytest.mark.gpu
def test_to_model_input_has_no_host_sync_on_cuda() -> None:
    """The photometric half of the engine's input path runs on the training stream: no host sync once warm."""
    from canbench.data.loader import to_model_input

    cfg = ViewAugConfig(img_size=32)
    n, v = 8, 2
    g = torch.Generator().manual_seed(0)
    photo = sample_photometric(g, n * v, cfg)
    photo[:, A.COL_JITTER] = 1.0  # every jitter position active, hue included
    batch = {"crops": torch.randint(0, 256, (n, v, 3, 32, 32), dtype=torch.uint8, generator=g).pin_memory(),
             "photo": photo.view(n, v, -1).pin_memory()}
    to_model_input(batch, cfg, "cuda")  # first call fills the per-device constant caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = to_model_input(batch, cfg, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.cpu(), to_model_input(batch, cfg, "cpu"), atol=2e-3, rtol=0)  # TF32 blur


def test_apply_photometric_each_op_isolated() -> None:
    """One op at a time, with extreme factors, against torchvision."""
    cfg = ViewAugConfig(img_size=32)
    x = _test_images(4, 32, seed=7)
    zero = torch.zeros(4, NUM_PHOTO_PARAMS)
    zero[:, A.COL_ORDER] = torch.arange(4).float()
    zero[:, [A.COL_BRIGHTNESS, A.COL_CONTRAST, A.COL_SATURATION]] = 1.0
    zero[:, A.COL_SIGMA] = 1.0
    for col, values in ((A.COL_BRIGHTNESS, [0.2, 1.8]), (A.COL_CONTRAST, [0.2, 1.8]),
                        (A.COL_SATURATION, [0.2, 1.8]), (A.COL_HUE, [-0.2, 0.2])):
        for v in values:
            packed = zero.clone()
            packed[:, A.COL_JITTER] = 1.0
            packed[:, col] = v
            torch.testing.assert_close(apply_photometric(x, packed, cfg), _reference(x, packed, cfg),
                                       atol=2e-5, rtol=0)
    for col in (A.COL_FLIP, A.COL_GRAY, A.COL_BLUR):
        packed = zero.clone()
        packed[:, col] = 1.0
        out = apply_photometric(x, packed, cfg)
        torch.testing.assert_close(out, _reference(x, packed, cfg), atol=1e-5, rtol=0)
        assert not torch.equal(out, x)
    packed = zero.clone()
    packed[:, A.COL_GRAY] = 1.0
    gray = apply_photometric(x, packed, cfg)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])


def test_apply_photometric_mae_is_flip_only() -> None:
    cfg = ViewAugConfig(kind="mae")
    packed = sample_photometric(torch.Generator().manual_seed(0), 16, cfg)
    x = torch.rand(16, 3, 32, 32)
    flip = unpack_photometric(packed).flip
    want = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(apply_photometric(x, packed, cfg), want)


def test_apply_photometric_rejects_bad_input() -> None:
    cfg = ViewAugConfig()
    with pytest.raises(ValueError, match=r"\(n, 3, S, S\)"):
        apply_photometric(torch.rand(2, 1, 32, 32), torch.zeros(2, NUM_PHOTO_PARAMS), cfg)
    with pytest.raises(ValueError, match="3 parameter rows for 2 images"):
        apply_photometric(torch.rand(2, 3, 32, 32), torch.zeros(3, NUM_PHOTO_PARAMS), cfg)
    with pytest.raises(ValueError, match="shape"):
        unpack_photometric(torch.zeros(2, 5))


# ----------------------------------------------------------------------------------------------------
# TwoViewTransform


def test_two_view_transform_shapes_and_determinism() -> None:
    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    tr = TwoViewTransform(ViewAugConfig(img_size=32))
    crops, photo = tr(img, torch.Generator().manual_seed(5))
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == torch.uint8
    assert photo.shape == (2, NUM_PHOTO_PARAMS) and photo.dtype == torch.float32
    crops2, photo2 = tr(img, torch.Generator().manual_seed(5))
    assert torch.equal(crops, crops2) and torch.equal(photo, photo2)
    crops3, photo3 = tr(img, torch.Generator().manual_seed(6))
    assert not torch.equal(crops, crops3) and not torch.equal(photo, photo3)
    assert not torch.equal(crops[0], crops[1]) and not torch.equal(photo[0], photo[1])  # views independent


def test_two_view_transform_pil_and_gray_inputs() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    tr = TwoViewTransform(ViewAugConfig(img_size=24))
    from_pil = tr(PIL.Image.fromarray(arr), torch.Generator().manual_seed(1))
    from_tensor = tr(torch.from_numpy(arr).permute(2, 0, 1), torch.Generator().manual_seed(1))
    assert torch.equal(from_pil[0], from_tensor[0]) and torch.equal(from_pil[1], from_tensor[1])
    crops, _ = tr(PIL.Image.fromarray(arr[..., 0]), torch.Generator().manual_seed(1))  # mode L
    assert crops.shape == (2, 3, 24, 24) and torch.equal(crops[:, 0], crops[:, 2])
    with pytest.raises(TypeError, match="uint8"):
        tr(torch.rand(3, 8, 8), torch.Generator())


def test_two_view_transform_one_view_mae() -> None:
    tr = TwoViewTransform(ViewAugConfig(img_size=16, kind="mae"), num_views=1)
    crops, photo = tr(torch.zeros(3, 20, 20, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert crops.shape == (1, 3, 16, 16) and photo.shape == (1, NUM_PHOTO_PARAMS)
    with pytest.raises(ConfigError, match="num_views=0"):
        TwoViewTransform(ViewAugConfig(), num_views=0)


def test_crop_is_resized_region() -> None:
    """A full-image crop with no resize returns the image; a crop samples the right region."""
    img = torch.arange(3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 8, 8)
    assert torch.equal(A.crop_resize(img, (0, 0, 8, 8), 8), img)
    assert torch.equal(A.crop_resize(img, (2, 3, 4, 4), 4), img[:, 2:6, 3:7])
