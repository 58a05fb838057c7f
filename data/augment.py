"""SimCLR / MAE view augmentation with explicit randomness, split into a geometric and a photometric part.

Protocol (docs/protocols.md §2.4, Chen et al. 2020): RandomResizedCrop scale (0.08, 1), ratio (3/4, 4/3);
horizontal flip p 0.5; colour jitter strength s -> (0.8s, 0.8s, 0.8s, 0.2s) in a random order, p 0.8;
grayscale p 0.2; Gaussian blur (kernel 10% of the side, sigma U[0.1, 2]) p 0.5; independently per view.
``kind='mae'``: RandomResizedCrop(scale (0.2, 1), bicubic) + flip only.

Split (the GPU fast path reuses it):

* geometric, per sample on CPU: :func:`sample_crop` + :func:`crop_resize` -> uint8 ``(3, S, S)``;
* photometric: parameters drawn per view (:func:`sample_photometric`) and packed in a float row of
  ``K = NUM_PHOTO_PARAMS`` columns; applied batched on any device by :func:`apply_photometric`.

The horizontal flip is sampled with the photometric parameters and applied in
:func:`apply_photometric`: it commutes with every photometric op (per-pixel colour ops, a global mean,
a symmetric blur kernel with symmetric reflect padding), so the result equals flipping right after the
crop, and the packed row describes the whole non-geometric part of a view.

Every random number comes from an explicit ``torch.Generator`` (the loader seeds one per sample from
``methods.rng``), drawn in a fixed order whatever the outcomes: per view, first the crop (10 attempts at
most, like torchvision) of every view, then one row of photometric parameters per view.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import PIL.Image
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from canbench.config import ConfigError

AUG_KINDS = ("simclr", "mae")

# Column layout of the packed photometric row (n, K).
COL_FLIP = 0
COL_JITTER = 1
COL_BRIGHTNESS = 2
COL_CONTRAST = 3
COL_SATURATION = 4
COL_HUE = 5
COL_ORDER = slice(6, 10)  # a permutation of (0, 1, 2, 3) = (brightness, contrast, saturation, hue)
COL_GRAY = 10
COL_BLUR = 11
COL_SIGMA = 12
NUM_PHOTO_PARAMS = 13

OP_BRIGHTNESS, OP_CONTRAST, OP_SATURATION, OP_HUE = 0, 1, 2, 3

_KIND_DEFAULTS: dict[str, dict[str, object]] = {
    "simclr": dict(crop_scale=(0.08, 1.0), jitter_p=0.8, gray_p=0.2, blur_p=0.5, interpolation="bilinear"),
    "mae": dict(crop_scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, interpolation="bicubic"),
}
_INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@dataclass
class ViewAugConfig:
    """Parameters of one view's augmentation; ``None`` fields take the defaults of ``kind``."""

    img_size: int = 32
    kind: str = "simclr"  # simclr (paper, also its MAE: Table 8) | mae (RandomResizedCrop(0.2, 1) + flip)
    crop_scale: tuple[float, float] | None = None  # simclr (0.08, 1); mae (0.2, 1)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter_strength: float = 1.0  # s: brightness/contrast/saturation 0.8 s, hue 0.2 s
    jitter_p: float | None = None  # simclr 0.8; mae 0
    gray_p: float | None = None  # simclr 0.2; mae 0
    blur_p: float | None = None  # simclr 0.5; mae 0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_frac: float = 0.1  # kernel = 10% of the side, see blur_kernel_size()
    interpolation: str | None = None  # simclr bilinear (torchvision default); mae bicubic

    def __post_init__(self) -> None:
        if self.kind not in AUG_KINDS:
            raise ConfigError(f"ViewAugConfig.kind={self.kind!r} is not one of {AUG_KINDS}")
        for key, value in _KIND_DEFAULTS[self.kind].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.crop_scale = tuple(float(v) for v in self.crop_scale)  # type: ignore[assignment]
        self.crop_ratio = tuple(float(v) for v in self.crop_ratio)  # type: ignore[assignment]
        self.blur_sigma = tuple(float(v) for v in self.blur_sigma)  # type: ignore[assignment]
        if not isinstance(self.img_size, int) or self.img_size < 1:
            raise ConfigError(f"ViewAugConfig.img_size={self.img_size!r} must be a positive int")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ConfigError(f"ViewAugConfig.crop_scale={self.crop_scale} must satisfy 0 < lo <= hi <= 1")
        lo, hi = self.crop_ratio
        if not 0.0 < lo <= hi:
            raise ConfigError(f"ViewAugConfig.crop_ratio={self.crop_ratio} must satisfy 0 < lo <= hi")
        for key in ("flip_p", "jitter_p", "gray_p", "blur_p"):
            p = getattr(self, key)
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"ViewAugConfig.{key}={p} must be a probability in [0, 1]")
        if not 0.0 <= self.jitter_strength <= 2.5:
            # hue factor 0.2 s must stay within torchvision's [-0.5, 0.5]
            raise ConfigError(f"ViewAugConfig.jitter_strength={self.jitter_strength} must be in [0, 2.5]")
        lo, hi = self.blur_sigma
        if not 0.0 < lo <= hi:
            raise ConfigError(f"ViewAugConfig.blur_sigma={self.blur_sigma} must satisfy 0 < lo <= hi")
        if not 0.0 <= self.blur_kernel_frac <= 1.0:
            raise ConfigError(f"ViewAugConfig.blur_kernel_frac={self.blur_kernel_frac} must be in [0, 1]")
        if self.interpolation not in _INTERPOLATIONS:
            raise ConfigError(
                f"ViewAugConfig.interpolation={self.interpolation!r} is not one of {tuple(_INTERPOLATIONS)}"
            )

    @property
    def blur_kernel_size(self) -> int:
        """Odd blur kernel size for ``img_size`` (see :func:`blur_kernel_size`)."""
        return blur_kernel_size(self.img_size, self.blur_kernel_frac)

    def to_dict(self) -> dict[str, object]:
        """Plain dict of all (resolved) fields, e.g. for the protocol fingerprint."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def blur_kernel_size(img_size: int, frac: float = 0.1) -> int:
    """Kernel side ``2 * (floor(frac * S) // 2) + 1``, at least 3.

    Same rounding as google-research/simclr (``kernel = S // 10; radius = kernel // 2;
    size = 2 * radius + 1``): 224 -> 23, 96 -> 9, 32 -> 3. An even floor is rounded up to the next odd
    size, an odd floor is kept.
    """
    k = int(math.floor(frac * img_size + 1e-9))
    return max(3, 2 * (k // 2) + 1)


# ----------------------------------------------------------------------------------------------------
# Geometric part (CPU, per sample)


def sample_crop(generator: torch.Generator, h: int, w: int, scale: tuple[float, float],
                ratio: tuple[float, float]) -> tuple[int, int, int, int]:
    """RandomResizedCrop parameters ``(top, left, height, width)``: torchvision's algorithm, explicit generator.

    Up to 10 attempts draw (area fraction ~ U[scale], log aspect ~ U[log ratio]) and keep the first
    crop that fits; else a central crop clamped to ``ratio``. Each attempt draws 2 uniforms, a kept
    attempt 2 more integers.
    """
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_lo + u[1] * (log_hi - log_lo))
        cw = int(round(math.sqrt(target_area * aspect)))
        ch = int(round(math.sqrt(target_area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
            return top, left, ch, cw
    in_ratio = w / h  # fallback: central crop
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def crop_resize(img: torch.Tensor, box: tuple[int, int, int, int], size: int,
                interpolation: str = "bilinear") -> torch.Tensor:
    """Crop ``box = (top, left, height, width)`` of a uint8 ``(3, H, W)`` image, resize (antialias) to ``(3, S, S)``."""
    out = TF.resized_crop(img, *box, size=[size, size], interpolation=_INTERPOLATIONS[interpolation],
                          antialias=True)
    return out


def to_uint8_rgb(img: torch.Tensor | PIL.Image.Image) -> torch.Tensor:
    """A PIL image or a uint8 tensor ``(C, H, W)`` (C in 1, 3, 4) -> uint8 ``(3, H, W)``."""
    if isinstance(img, PIL.Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        return TF.pil_to_tensor(img)
    if not isinstance(img, torch.Tensor) or img.dtype != torch.uint8 or img.ndim != 3:
        desc = f"{type(img).__name__}" + (f" {img.dtype} {tuple(img.shape)}" if isinstance(img, torch.Tensor)
                                         else "")
        raise TypeError(f"expected a PIL image or a uint8 tensor (C, H, W), got {desc}")
    c = img.shape[0]
    if c == 3:
        return img
    if c == 1:
        return img.expand(3, -1, -1)
    if c == 4:
        return img[:3]
    raise TypeError(f"expected 1, 3 or 4 channels, got a tensor of shape {tuple(img.shape)}")


# ----------------------------------------------------------------------------------------------------
# Photometric parameters


class PhotoParams(NamedTuple):
    """Unpacked photometric parameters; every field has shape (n,) except ``order`` (n, 4)."""

    flip: torch.Tensor  # bool
    jitter_apply: torch.Tensor  # bool
    brightness: torch.Tensor  # factor, U[max(0, 1 - 0.8 s), 1 + 0.8 s]
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # U[-0.2 s, 0.2 s]
    order: torch.Tensor  # long (n, 4): op at each jitter position (0 b, 1 c, 2 s, 3 h)
    gray: torch.Tensor  # bool
    blur_apply: torch.Tensor  # bool
    sigma: torch.Tensor  # U[blur_sigma]


def _photo_affine(cfg: ViewAugConfig) -> tuple[list[float], list[float], list[int], list[float]]:
    """Per-column (offset, width) of the uniform -> value map, and the Bernoulli columns with their p."""
    s = cfg.jitter_strength
    offset, width = [0.0] * NUM_PHOTO_PARAMS, [0.0] * NUM_PHOTO_PARAMS
    for col in (COL_BRIGHTNESS, COL_CONTRAST, COL_SATURATION):  # U[max(0, 1 - 0.8 s), 1 + 0.8 s]
        lo, hi = max(0.0, 1.0 - 0.8 * s), 1.0 + 0.8 * s
        offset[col], width[col] = lo, hi - lo
    offset[COL_HUE], width[COL_HUE] = -0.2 * s, 0.4 * s  # U[-0.2 s, 0.2 s]
    offset[COL_SIGMA], width[COL_SIGMA] = cfg.blur_sigma[0], cfg.blur_sigma[1] - cfg.blur_sigma[0]
    bern_cols = [COL_FLIP, COL_JITTER, COL_GRAY, COL_BLUR]
    bern_p = [cfg.flip_p, cfg.jitter_p, cfg.gray_p, cfg.blur_p]
    return offset, width, bern_cols, bern_p


def sample_photometric(generator: torch.Generator, n: int, cfg: ViewAugConfig) -> torch.Tensor:
    """Draw ``n`` rows of photometric parameters -> float32 ``(n, K)``; always ``n * K`` uniforms.

    Column j of row i is a function of uniform ``u[i, j]`` only (Bernoulli: ``u < p``; factors:
    affine in u; order: argsort of ``u[i, 6:10]``, a uniform random permutation).
    """
    offset, width, bern_cols, bern_p = _photo_affine(cfg)
    u = torch.rand(n, NUM_PHOTO_PARAMS, generator=generator, dtype=torch.float32)  # (n, K)
    rows = []
    for r in u.tolist():  # Python doubles: a few microseconds per row, exact and platform independent
        out = [o + x * w for x, o, w in zip(r, offset, width)]
        for col, p in zip(bern_cols, bern_p):
            out[col] = 1.0 if r[col] < p else 0.0
        keys = r[COL_ORDER]
        out[COL_ORDER] = [float(i) for i in sorted(range(4), key=keys.__getitem__)]  # argsort
        rows.append(out)
    return torch.tensor(rows, dtype=torch.float32).view(n, NUM_PHOTO_PARAMS)


def unpack_photometric(t: torch.Tensor) -> PhotoParams:
    """Packed ``(n, K)`` -> :class:`PhotoParams` (views of ``t`` or small casts)."""
    if t.ndim != 2 or t.shape[1] != NUM_PHOTO_PARAMS:
        raise ValueError(f"packed photometric parameters must have shape (n, {NUM_PHOTO_PARAMS}), "
                         f"got {tuple(t.shape)}")
    return PhotoParams(
        flip=t[:, COL_FLIP] > 0.5, jitter_apply=t[:, COL_JITTER] > 0.5,
        brightness=t[:, COL_BRIGHTNESS], contrast=t[:, COL_CONTRAST], saturation=t[:, COL_SATURATION],
        hue=t[:, COL_HUE], order=t[:, COL_ORDER].round().long(), gray=t[:, COL_GRAY] > 0.5,
        blur_apply=t[:, COL_BLUR] > 0.5, sigma=t[:, COL_SIGMA],
    )


# ----------------------------------------------------------------------------------------------------
# Batched photometric ops; x float (n, 3, S, S) in [0, 1]


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma like torchvision: (n, 3, H, W) -> (n, 1, H, W)."""
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


_HUE_CHANNEL_OFFSET = (5.0, 3.0, 1.0)  # HSV -> RGB: channel c = v - chroma * clamp(min(k, 4 - k), 0, 1)


def _adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """Per-sample hue shift (n,) in turns, like ``adjust_hue``: (n, 3, H, W) -> (n, 3, H, W).

    Same HSV model as torchvision (Pillow's RGB -> HSV, hue rotated, HSV -> RGB) in closed form:
    ``k = (offset_c + 6 h) mod 6``, ``c = max - chroma * clamp(min(k, 4 - k), 0, 1)`` with offsets 5, 3, 1
    for R, G, B. Equal to torchvision's piecewise (p, q, t) table up to float rounding, about 3x faster.
    """
    r, g, b = x.unbind(dim=-3)
    minc, maxc = torch.aminmax(x, dim=-3)  # (n, H, W)
    chroma = maxc - minc
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    h6 = torch.where(maxc == r, (g - b) / safe,
                     torch.where(maxc == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))  # in (-1, 5]
    h6 = h6.add_(hue.view(-1, 1, 1) * 6.0).unsqueeze_(-3)  # (n, 1, H, W)
    k = (h6 + _hue_offsets(x.dtype, x.device)).remainder_(6.0)  # (n, 3, H, W)
    w = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(-3) - chroma.unsqueeze(-3) * w


@functools.lru_cache(maxsize=16)
def _hue_offsets(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, 3, 1, 1) channel offsets, built once per device: ``torch.tensor(..., device=cuda)`` is a blocking
    host->device copy, i.e. a host sync per call (up to 4 per step, one per jitter position)."""
    return torch.tensor(_HUE_CHANNEL_OFFSET, dtype=dtype, device=device).view(1, 3, 1, 1)


def _gaussian_kernels(sigma: torch.Tensor, k: int) -> torch.Tensor:
    """1-D Gaussian kernels (n, k) for per-sample ``sigma`` (n,), torchvision's formula."""
    lim = (k - 1) / (2.0 * math.sqrt(2.0))
    pos = torch.linspace(-lim, lim, steps=k, dtype=sigma.dtype, device=sigma.device)
    return torch.softmax(pos.view(1, k).div(sigma.view(-1, 1)).pow(2).neg(), dim=1)


def _blur(x: torch.Tensor, sigma: torch.Tensor, k: int) -> torch.Tensor:
    """Separable Gaussian blur, per-sample sigma, reflect padding: (n, C, H, W) -> (n, C, H, W)."""
    n, c, h, w = x.shape
    ker = _gaussian_kernels(sigma.to(x.dtype), k).repeat_interleave(c, dim=0)  # (n*C, k)
    pad = k // 2
    if pad >= min(h, w):
        raise ValueError(f"blur kernel {k} too large for a {h}x{w} image (reflect padding needs pad < side)")
    y = F.pad(x.reshape(1, n * c, h, w), [pad, pad, pad, pad], mode="reflect")
    y = F.conv2d(y, ker.view(n * c, 1, 1, k), groups=n * c)  # along width
    y = F.conv2d(y, ker.view(n * c, 1, k, 1), groups=n * c)  # along height
    return y.view(n, c, h, w)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample select: mask (n,) bool -> a[i] where mask[i] else b[i]."""
    return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), a, b)


def _maybe_any(mask: torch.Tensor) -> bool:
    """``mask.any()`` on CPU (lets work be skipped); True elsewhere (no host synchronisation)."""
    return bool(mask.any()) if _use_subsets(mask) else True


def _use_subsets(x: torch.Tensor) -> bool:
    """CPU: work on the selected rows only (the host sync is free there); else compute all, select."""
    return x.device.type == "cpu"


def _apply_masked(x: torch.Tensor, mask: torch.Tensor, fn, *args: torch.Tensor) -> torch.Tensor:
    """``fn`` on the samples where ``mask`` holds; others unchanged.

    CPU: computes only the selected rows (index_select / index_copy).
    Other devices: computes all rows and selects with ``torch.where`` (no host synchronisation).
    """
    if _use_subsets(x):
        idx = torch.nonzero(mask).flatten()
        if idx.numel() == 0:
            return x
        if idx.numel() == x.shape[0]:
            return fn(x, *args)
        out = fn(x.index_select(0, idx), *(a.index_select(0, idx) for a in args))
        return x.index_copy(0, idx, out)
    return _where(mask, fn(x, *args), x)


def _row_groups(p: PhotoParams, cfg: ViewAugConfig) -> torch.Tensor:
    """Group key per row, 0..9: ``5 * blur + hue position`` (4 = no hue: jitter off for the row)."""
    hue_pos = (p.order == OP_HUE).long().argmax(dim=1)
    jitter = cfg.jitter_p > 0 and cfg.jitter_strength > 0
    hue_pos = torch.where(p.jitter_apply, hue_pos, 4) if jitter else torch.full_like(hue_pos, 4)
    blur = p.blur_apply.long() if cfg.blur_p > 0 else torch.zeros_like(hue_pos)
    return blur * 5 + hue_pos


def _grouped_plan(packed: torch.Tensor, packed_host: torch.Tensor, cfg: ViewAugConfig
                  ) -> tuple[torch.Tensor, list[list[tuple[int, int]]], tuple[int, int]]:
    """Row order that makes every (hue position, blur) group contiguous, and each group's bounds.

    The permutation is a stable argsort of the group keys computed on the device from ``packed``; the
    bounds are counted from the host copy ``packed_host`` (same keys, integers), so neither needs a
    host synchronisation. Returns ``perm``, per jitter position the row ranges that apply hue there,
    and the row range that is blurred.
    """
    perm = torch.argsort(_row_groups(unpack_photometric(packed), cfg), stable=True)
    counts = torch.bincount(_row_groups(unpack_photometric(packed_host), cfg), minlength=10).tolist()
    starts = [sum(counts[:k]) for k in range(11)]
    hue = [[(starts[k], starts[k + 1]) for k in (pos, 5 + pos) if counts[k]] for pos in range(4)]
    return perm, hue, (starts[5], starts[10])


def _apply_ranges(x: torch.Tensor, ranges: list[tuple[int, int]], fn, *args: torch.Tensor) -> torch.Tensor:
    """``fn`` on the row slices ``x[lo:hi]`` only, written back in place (``x`` is the function's own copy)."""
    for lo, hi in ranges:
        if hi > lo:
            x[lo:hi] = fn(x[lo:hi], *(a[lo:hi] for a in args))
    return x


def apply_photometric(x: torch.Tensor, packed: torch.Tensor, cfg: ViewAugConfig,
                      packed_host: torch.Tensor | None = None) -> torch.Tensor:
    """Flip, colour jitter (random order), grayscale and blur with per-sample parameters, batched.

    x: float (n, 3, S, S) in [0, 1] on any device; packed: (n, K) from :func:`sample_photometric`.
    Semantics of each op equal torchvision.transforms.v2.functional's (clamped to [0, 1]).

    Off CPU, without a host sync, each op is computed for every row and selected per row
    (``torch.where``): hue, the dearest op, then runs 4 times (once per jitter position) and blur on
    every row. ``packed_host``, a CPU copy of ``packed`` (the workers draw it on the CPU), removes that
    waste: rows are reordered on the device so that each (hue position, blur) group is a contiguous
    slice whose bounds the host already knows, hue and blur run on their slices only, and the order is
    restored at the end. Same result per row.
    """
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"apply_photometric expects float (n, 3, S, S), got {x.dtype} {tuple(x.shape)}")
    if packed.shape[0] != x.shape[0]:
        raise ValueError(f"{packed.shape[0]} parameter rows for {x.shape[0]} images")
    packed = packed.to(device=x.device)
    perm = None
    if packed_host is not None and not _use_subsets(x):
        if packed_host.shape != packed.shape or packed_host.device.type != "cpu":
            raise ValueError(f"packed_host must be a CPU copy of packed {tuple(packed.shape)}, got "
                             f"{tuple(packed_host.shape)} on {packed_host.device}")
        perm, hue_ranges, blur_range = _grouped_plan(packed, packed_host, cfg)
        x, packed = x.index_select(0, perm), packed.index_select(0, perm)
    p = unpack_photometric(packed)
    dt = x.dtype

    x = _where(p.flip, x.flip(-1), x)

    if cfg.jitter_p > 0 and cfg.jitter_strength > 0:
        # brightness, contrast and saturation are all blend(x, ref, f) = clamp(f x + (1 - f) ref):
        # ref = 0, mean(gray(x)) and gray(x); one fused blend per position covers the three ops.
        factors = torch.stack((p.brightness, p.contrast, p.saturation, p.hue), dim=1).to(dt)  # (n, 4)
        for pos in range(4):
            op = p.order[:, pos]  # (n,)
            active = p.jitter_apply
            is_blend = active & (op != OP_HUE)
            if _maybe_any(is_blend):
                gray = _gray(x)  # (n, 1, S, S)
                mean = gray.mean(dim=(-3, -2, -1), keepdim=True)  # (n, 1, 1, 1)
                ref = torch.where((op == OP_CONTRAST).view(-1, 1, 1, 1), mean,
                                  torch.where((op == OP_SATURATION).view(-1, 1, 1, 1), gray,
                                              torch.zeros_like(mean)))
                f = factors.gather(1, op.clamp(max=2).view(-1, 1)).view(-1, 1, 1, 1)  # (n, 1, 1, 1)
                blended = x.mul(f).add_(ref * (1.0 - f)).clamp_(0.0, 1.0)
                x = _where(is_blend, blended, x)
            if perm is None:
                x = _apply_masked(x, active & (op == OP_HUE), _adjust_hue, p.hue.to(dt))
            else:
                x = _apply_ranges(x, hue_ranges[pos], _adjust_hue, p.hue.to(dt))

    if cfg.gray_p > 0:
        x = _where(p.gray, _gray(x).expand_as(x), x)

    if cfg.blur_p > 0:
        k = blur_kernel_size(x.shape[-1], cfg.blur_kernel_frac)
        blur = lambda y, s: _blur(y, s, k)
        x = _apply_masked(x, p.blur_apply, blur, p.sigma) if perm is None else \
            _apply_ranges(x, [blur_range], blur, p.sigma)
    if perm is not None:
        x = torch.empty_like(x).index_copy_(0, perm, x)  # back to the caller's row order
    return x


# ----------------------------------------------------------------------------------------------------


class TwoViewTransform:
    """Per-sample CPU part of the pipeline: ``(img, generator) -> (crops uint8 (V,3,S,S), photo float (V,K))``."""

    def __init__(self, cfg: ViewAugConfig, num_views: int = 2) -> None:
        if num_views < 1:
            raise ConfigError(f"TwoViewTransform num_views={num_views} must be >= 1")
        self.cfg = cfg
        self.num_views = num_views

    def __call__(self, img: torch.Tensor | PIL.Image.Image,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Crops and photometric rows of ``num_views`` independent views of ``img``."""
        img = to_uint8_rgb(img)
        _, h, w = img.shape
        cfg = self.cfg
        crops = []
        for _ in range(self.num_views):  # crops of all views first, then all photometric rows
            box = sample_crop(generator, h, w, cfg.crop_scale, cfg.crop_ratio)
            crops.append(crop_resize(img, box, cfg.img_size, cfg.interpolation))
        photo = sample_photometric(generator, self.num_views, cfg)
        return torch.stack(crops), photo  # (V, 3, S, S) uint8, (V, K) float32

    def __repr__(self) -> str:
        return f"TwoViewTransform(num_views={self.num_views}, cfg={self.cfg})"
