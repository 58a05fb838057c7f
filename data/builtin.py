"""The built-in data set: a seeded, procedurally generated universe of shape images (no download).

Every image is a pure function of ``(seed, family, split, index)`` (plus ``img_size``, ``variant``,
``severity``): random access is O(1) and the bytes are the same on every machine. To keep them so, the
pixel path uses only IEEE-exact float64 operations (+, -, *, /, sqrt, floor, min/max, abs), numpy's
PCG64 bit generator (integers and uniforms, no ``standard_normal``), integer compositing and
integer-tap blurs; rotations use a local polynomial cosine instead of the platform's libm.

The class of an image is the *shape* of its foreground object (``MAIN_CLASSES``; a disjoint family
``HELDOUT_CLASSES`` for few-shot transfer). Nuisance factors, drawn independently of the class:
foreground colour, position, scale, rotation, background texture (flat, gradient, value noise,
stripes) and colours, and small distractor blobs. The foreground keeps a luminance contrast of at least
``MIN_CONTRAST`` to both background colours, so the shape survives grayscale and colour jitter.

Distribution-shift variants (same objects as ``clean`` for the same index, in the spirit of
ImageNet-C / -R / background-shift sets): ``noise_blur`` (binomial blur + Gaussian-like noise,
``severity`` 1-5), ``rendition`` (outline-only pencil sketch on paper), ``new_background``
(background textures and a hue band never used in training), ``occlusion`` (a rectangle over part of
the object).

Why one module: the renderer, its scene parameters and the data set classes define one thing — the
bytes of the built-in images — and must change together (any edit changes every image).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from canbench.config import ConfigError

# Version of the rendered images: bumped whenever they change (the golden digests in tests/test_builtin_data.py
# fail then). It is recorded in run configs (data.builtin_version) and evaluation fingerprints, so results on
# different versions are never compared or mixed. v1 (until 2026-11-26): radius 26-40%, any rotation, 0-4
# blobs, texture contrast 0-1; v2: radius 30-42%, +-45 degrees, 0-2 blobs, texture contrast 0-0.5.
BUILTIN_VERSION = 2
SPLITS = ("train", "val", "test")
FAMILIES = ("main", "heldout")
VARIANTS = ("clean", "noise_blur", "rendition", "new_background", "occlusion")
DEFAULT_SIZES = {"train": 4096, "val": 1000, "test": 2000}

MIN_CONTRAST = 0.3  # luminance gap between the object and each background colour
TRAIN_HUE_GAP = (0.70, 0.95)  # hues (turns) never used by the training palette; new_background uses them
NOISE_STD = (10.0, 18.0, 28.0, 40.0, 56.0)  # noise_blur: noise std (0-255 scale) per severity
BLUR_PASSES = (1, 2, 3, 5, 8)  # noise_blur: [1, 2, 1] / 4 passes per axis at 32 px (sigma = sqrt(n / 2) px)

_STREAM_GEOMETRY, _STREAM_APPEARANCE, _STREAM_VARIANT = 0, 1, 2


# ----------------------------------------------------------------------------------------------------
# Deterministic scalar helpers


def cos_sin_turns(t: float) -> tuple[float, float]:
    """(cos, sin) of ``t`` turns with a fixed polynomial (no libm, so identical on every platform)."""
    t = t - math.floor(t)
    octant = int(t * 8.0)  # reduce to [-1/16, 1/16] turn around a multiple of 1/8
    x = (t - (octant + 0.5) / 8.0) * (2.0 * math.pi)  # |x| <= pi / 8
    x2 = x * x
    s = x * (1.0 - x2 / 6.0 * (1.0 - x2 / 20.0 * (1.0 - x2 / 42.0 * (1.0 - x2 / 72.0 * (1.0 - x2 / 110.0)))))
    c = 1.0 - x2 / 2.0 * (1.0 - x2 / 12.0 * (1.0 - x2 / 30.0 * (1.0 - x2 / 56.0 * (1.0 - x2 / 90.0))))
    ca, sa = _OCTANT_CS[octant]  # rotate by the octant centre angle (octant + 0.5) / 8 turn
    return c * ca - s * sa, s * ca + c * sa


# cos/sin of (k + 0.5) / 8 turns from the exact values cos(pi/8) = sqrt(2 + sqrt(2)) / 2 etc.
_C8 = math.sqrt(2.0 + math.sqrt(2.0)) / 2.0
_S8 = math.sqrt(2.0 - math.sqrt(2.0)) / 2.0
_OCTANT_CS = [(_C8, _S8), (_S8, _C8), (-_S8, _C8), (-_C8, _S8), (-_C8, -_S8), (-_S8, -_C8), (_S8, -_C8),
              (_C8, -_S8)]


def hsv_to_rgb255(h: float, s: float, v: float) -> tuple[int, int, int]:
    """HSV in [0, 1] -> integer RGB in [0, 255] (exact arithmetic only)."""
    h6 = (h - math.floor(h)) * 6.0
    out = []
    for off in (5.0, 3.0, 1.0):
        k = (off + h6) % 6.0
        w = min(max(min(k, 4.0 - k), 0.0), 1.0)
        out.append(int(math.floor((v - v * s * w) * 255.0 + 0.5)))
    return out[0], out[1], out[2]


def luminance(rgb: tuple[int, int, int]) -> float:
    """ITU-R 601 luma of an integer RGB colour, in [0, 1]."""
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0


# ----------------------------------------------------------------------------------------------------
# Signed distance functions in the object's local frame (unit ~ the object's radius; < 0 inside)

Arr = np.ndarray


def _circle(u: Arr, v: Arr, cx: float, cy: float, r: float) -> Arr:
    du, dv = u - cx, v - cy
    return np.sqrt(du * du + dv * dv) - r


def _box(u: Arr, v: Arr, cx: float, cy: float, hx: float, hy: float) -> Arr:
    qx, qy = np.abs(u - cx) - hx, np.abs(v - cy) - hy
    ox, oy = np.maximum(qx, 0.0), np.maximum(qy, 0.0)
    return np.sqrt(ox * ox + oy * oy) + np.minimum(np.maximum(qx, qy), 0.0)


def _polygon(u: Arr, v: Arr, verts: list[tuple[float, float]]) -> Arr:
    """Exact SDF of a simple polygon (I. Quilez's sdPolygon), vectorised over the pixel grid."""
    x0, y0 = verts[0]
    d = (u - x0) ** 2 + (v - y0) ** 2
    sign = np.ones_like(u)
    j = len(verts) - 1
    for i in range(len(verts)):
        (xi, yi), (xj, yj) = verts[i], verts[j]
        ex, ey = xj - xi, yj - yi
        wx, wy = u - xi, v - yi
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        d = np.minimum(d, bx * bx + by * by)
        c1, c2, c3 = v >= yi, v < yj, ex * wy > ey * wx
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        sign = np.where(flip, -sign, sign)
        j = i
    return sign * np.sqrt(d)


def _regular(n: int, r: float, phase: float = 0.25) -> list[tuple[float, float]]:
    return [(r * c, r * s) for c, s in (cos_sin_turns(phase + k / n) for k in range(n))]


_TRIANGLE = _regular(3, 0.95)
_STAR = [(p[0] * (0.98 if k % 2 == 0 else 0.42), p[1] * (0.98 if k % 2 == 0 else 0.42))
         for k, p in enumerate(_regular(10, 1.0))]
_ARROW_HEAD = [(0.1, -0.58), (0.95, 0.0), (0.1, 0.58)]
_CHEVRON = [(-0.85, -0.55), (0.0, 0.25), (0.85, -0.55), (0.85, 0.05), (0.0, 0.85), (-0.85, 0.05)]
_DOTS3 = _regular(3, 0.6)

SDF = Callable[[Arr, Arr], Arr]

MAIN_SHAPES: dict[str, SDF] = {
    "circle": lambda u, v: _circle(u, v, 0.0, 0.0, 0.8),
    "square": lambda u, v: _box(u, v, 0.0, 0.0, 0.68, 0.68),
    "triangle": lambda u, v: _polygon(u, v, _TRIANGLE),
    "cross": lambda u, v: np.minimum(_box(u, v, 0.0, 0.0, 0.92, 0.26), _box(u, v, 0.0, 0.0, 0.26, 0.92)),
    "ring": lambda u, v: np.abs(_circle(u, v, 0.0, 0.0, 0.7)) - 0.2,
    "star": lambda u, v: _polygon(u, v, _STAR),
    "bars": lambda u, v: np.minimum(np.minimum(_box(u, v, -0.6, 0.0, 0.15, 0.82), _box(u, v, 0.0, 0.0, 0.15, 0.82)),
                                    _box(u, v, 0.6, 0.0, 0.15, 0.82)),
    "l_shape": lambda u, v: np.minimum(_box(u, v, -0.47, 0.0, 0.24, 0.9), _box(u, v, 0.03, 0.66, 0.74, 0.24)),
    "two_dots": lambda u, v: np.minimum(_circle(u, v, -0.52, 0.0, 0.37), _circle(u, v, 0.52, 0.0, 0.37)),
    "arrow": lambda u, v: np.minimum(_box(u, v, -0.35, 0.0, 0.55, 0.17), _polygon(u, v, _ARROW_HEAD)),
}
HELDOUT_SHAPES: dict[str, SDF] = {
    "t_shape": lambda u, v: np.minimum(_box(u, v, 0.0, -0.64, 0.88, 0.22), _box(u, v, 0.0, 0.2, 0.22, 0.7)),
    "crescent": lambda u, v: np.maximum(_circle(u, v, 0.0, 0.0, 0.85), -_circle(u, v, 0.4, -0.1, 0.66)),
    "square_frame": lambda u, v: np.maximum(_box(u, v, 0.0, 0.0, 0.76, 0.76), -_box(u, v, 0.0, 0.0, 0.42, 0.42)),
    "three_dots": lambda u, v: np.minimum(np.minimum(_circle(u, v, *_DOTS3[0], 0.3), _circle(u, v, *_DOTS3[1], 0.3)),
                                          _circle(u, v, *_DOTS3[2], 0.3)),
    "chevron": lambda u, v: _polygon(u, v, _CHEVRON),
    "semicircle": lambda u, v: np.maximum(_circle(u, v, 0.0, 0.3, 0.95), v - 0.3),
}
MAIN_CLASSES = tuple(MAIN_SHAPES)
HELDOUT_CLASSES = tuple(HELDOUT_SHAPES)


# ----------------------------------------------------------------------------------------------------
# Rendering helpers (float64 maps -> integer compositing)


def _alpha255(a: Arr) -> Arr:
    """Coverage in [0, 1] -> integer alpha 0..255 (int32)."""
    return np.floor(np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.int32)


def _blend(dst: Arr, rgb: tuple[int, int, int] | Arr, a: Arr) -> Arr:
    """Integer over-compositing: dst int32 (H, W, 3), colour (3,) or (H, W, 3), alpha int32 (H, W)."""
    a = a[..., None]
    return (np.asarray(rgb, dtype=np.int32) * a + dst * (255 - a) + 127) // 255


def _mix(c0: tuple[int, int, int], c1: tuple[int, int, int], t: Arr) -> Arr:
    """Per-pixel mix of two colours by a map ``t`` in [0, 1] -> int32 (H, W, 3)."""
    h, w = t.shape
    base = np.broadcast_to(np.asarray(c0, dtype=np.int32), (h, w, 3))
    return _blend(base, c1, _alpha255(t))


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> Arr:
    """Smooth noise in [0, 1], (size, size): bilinear upsampling of a (cells+1)^2 grid of random integers."""
    grid = rng.integers(0, 256, size=(cells + 1, cells + 1)).astype(np.float64) / 255.0
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (cells / size)
    i0 = np.minimum(np.floor(pos).astype(np.int64), cells - 1)
    f = pos - i0
    rows = grid[i0] * (1.0 - f)[:, None] + grid[i0 + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i0] * (1.0 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _binomial_blur(img: Arr, passes: int) -> Arr:
    """``passes`` integer [1, 2, 1] / 4 passes per axis with edge replication: int32 (H, W, 3)."""
    for _ in range(passes):
        p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
        img = (p[:-2] + 2 * p[1:-1] + p[2:] + 2) >> 2
        p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
        img = (p[:, :-2] + 2 * p[:, 1:-1] + p[:, 2:] + 2) >> 2
    return img


def _approx_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> Arr:
    """Unit-variance, bell-shaped noise from 4 summed uniform integers (exact, platform independent)."""
    s = rng.integers(0, 65536, size=(4, *shape)).sum(axis=0).astype(np.float64)
    return (s - 4 * 32767.5) / (65536.0 * math.sqrt(4.0 / 12.0))


@dataclass(frozen=True)
class SceneParams:
    """Ranges of the nuisance factors (the defaults define the built-in data set; changing them changes it)."""

    radius: tuple[float, float] = (0.30, 0.42)  # object radius as a fraction of the image side
    rotation: float = 0.25  # rotation range in turns, centred on 0 (0.25: +-45 degrees; 1.0: any angle)
    clutter_max: int = 2  # 0..clutter_max distractor blobs
    texture: tuple[float, float] = (0.0, 0.5)  # texture contrast: bg1 = bg0 + t * (random colour - bg0)


class _Scene:
    """Random parameters of one image; drawn from independent streams."""

    def __init__(self, geo: np.random.Generator, app: np.random.Generator, size: int, new_palette: bool,
                 params: SceneParams) -> None:
        s = float(size)
        self.radius = s * geo.uniform(*params.radius)
        slack = max(s / 2.0 - 0.9 * self.radius, 0.0)
        self.cx = s / 2.0 + geo.uniform(-slack, slack)
        self.cy = s / 2.0 + geo.uniform(-slack, slack)
        self.cos, self.sin = cos_sin_turns((geo.random() - 0.5) * params.rotation)
        self.new_palette = new_palette
        self.fg, self.bg0, self.bg1 = _draw_colours(app, new_palette, app.uniform(*params.texture))
        self.bg_kind = int(app.integers(0, 3 if new_palette else 4))
        self.bg_turns = app.random()
        self.bg_scale = app.uniform(0.0, 1.0)
        self.clutter = []
        for _ in range(int(app.integers(0, params.clutter_max + 1))):
            col = _palette(app, new_palette)
            self.clutter.append((app.uniform(0, s), app.uniform(0, s), s * app.uniform(0.035, 0.07), col))


def _palette(rng: np.random.Generator, new: bool) -> tuple[int, int, int]:
    """A random colour: training palette (hue outside TRAIN_HUE_GAP) or the unseen palette (inside)."""
    lo, hi = TRAIN_HUE_GAP
    if new:
        return hsv_to_rgb255(rng.uniform(lo, hi), rng.uniform(0.3, 1.0), rng.uniform(0.1, 1.0))
    h = rng.uniform(0.0, 1.0 - (hi - lo))
    h = h + (hi - lo) if h >= lo else h
    return hsv_to_rgb255(h, rng.uniform(0.0, 1.0), rng.uniform(0.08, 1.0))


RGB = tuple[int, int, int]


def _draw_colours(rng: np.random.Generator, new: bool, texture: float) -> tuple[RGB, RGB, RGB]:
    """Object colour and two background colours, both >= MIN_CONTRAST darker or both lighter than it.

    The second background colour lies ``texture`` of the way from the first to a random colour.
    """
    for _ in range(32):
        fg, b0, c = _palette(rng, new), _palette(rng, new), _palette(rng, new)
        b1 = tuple(int(math.floor(x0 + texture * (x1 - x0) + 0.5)) for x0, x1 in zip(b0, c))
        lf, l0, l1 = luminance(fg), luminance(b0), luminance(b1)
        if (l0 <= lf - MIN_CONTRAST and l1 <= lf - MIN_CONTRAST) or (
                l0 >= lf + MIN_CONTRAST and l1 >= lf + MIN_CONTRAST):
            return fg, b0, b1
    # fallback (p ~ 1e-4): a white object on the last background colours darkened to luminance <= 1/3
    return (255, 255, 255), (b0[0] // 3, b0[1] // 3, b0[2] // 3), (b1[0] // 3, b1[1] // 3, b1[2] // 3)


def _background(sc: _Scene, rng: np.random.Generator, xs: Arr, ys: Arr, size: int) -> Arr:
    """Background texture mixing the two background colours: int32 (H, W, 3)."""
    c, s = cos_sin_turns(sc.bg_turns)
    proj = (xs - size / 2.0) * c + (ys - size / 2.0) * s
    unit = size / 32.0
    if not sc.new_palette:
        kind = ("flat", "gradient", "noise", "stripes")[sc.bg_kind]
        if kind == "flat":
            t = np.zeros_like(xs)
        elif kind == "gradient":
            t = np.clip(0.5 + proj / size * (1.0 + sc.bg_scale), 0.0, 1.0)
        elif kind == "noise":
            t = _value_noise(rng, size, 2 + int(sc.bg_scale * 5))
        else:
            period = unit * (3.0 + 6.0 * sc.bg_scale)
            q = proj / period
            t = np.clip(1.5 - 3.0 * np.abs(2.0 * (q - np.floor(q)) - 1.0), 0.0, 1.0)  # soft stripes
    else:
        kind = ("checker", "grid", "plaid")[sc.bg_kind]
        cell = unit * (3.0 + 5.0 * sc.bg_scale)
        gx, gy = np.floor(xs / cell), np.floor(ys / cell)
        if kind == "checker":
            t = (gx + gy) - 2.0 * np.floor((gx + gy) / 2.0)
        elif kind == "grid":
            fx, fy = xs / cell - gx, ys / cell - gy
            t = ((fx < 0.3) | (fy < 0.3)).astype(np.float64)
        else:
            fx, fy = xs / cell - gx, ys / cell - gy
            t = (np.abs(fx - 0.5) + np.abs(fy - 0.5)) * (0.5 + 0.5 * (gx - 2.0 * np.floor(gx / 2.0)))
    return _mix(sc.bg0, sc.bg1, t)


def render_image(sdf: SDF, seed_keys: tuple[int, int, int, int], size: int, variant: str,
                 severity: int, params: SceneParams = SceneParams()) -> np.ndarray:
    """One image, uint8 (H, W, 3), as a pure function of its arguments."""
    def stream(k: int) -> np.random.Generator:
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence([*seed_keys, k])))

    geo, app, var = stream(_STREAM_GEOMETRY), stream(_STREAM_APPEARANCE), stream(_STREAM_VARIANT)
    sc = _Scene(geo, app, size, variant == "new_background", params)
    coords = np.arange(size, dtype=np.float64) + 0.5
    xs, ys = np.meshgrid(coords, coords)  # (H, W): pixel centres
    dx, dy = xs - sc.cx, ys - sc.cy
    u = (dx * sc.cos + dy * sc.sin) / sc.radius
    v = (dy * sc.cos - dx * sc.sin) / sc.radius
    dist = sdf(u, v) * sc.radius  # signed distance in pixels
    unit = size / 32.0

    if variant == "rendition":  # pencil outline on paper, no colour, no clutter
        paper = int(var.integers(205, 256))
        img = np.broadcast_to(np.int32(paper), (size, size, 3)) - (
            _value_noise(var, size, 3) * 18.0).astype(np.int32)[..., None]
        ink = int(var.integers(0, 70))
        half = unit * var.uniform(0.6, 1.0)
        wobble = (_value_noise(var, size, 4) - 0.5) * (1.2 * unit)
        a = _alpha255(half + 0.5 - np.abs(dist + wobble))
        img = _blend(img, (ink, ink, ink), a)
        return np.clip(img, 0, 255).astype(np.uint8)

    img = _background(sc, app, xs, ys, size)
    for bx, by, br, col in sc.clutter:  # distractor blobs under the object
        ddx, ddy = xs - bx, ys - by
        img = _blend(img, col, _alpha255(br + 0.5 - np.sqrt(ddx * ddx + ddy * ddy)))
    img = _blend(img, sc.fg, _alpha255(0.5 - dist))

    if variant == "occlusion":
        w, h = size * var.uniform(0.25, 0.45), size * var.uniform(0.25, 0.45)
        ox = sc.cx + sc.radius * var.uniform(-0.6, 0.6)
        oy = sc.cy + sc.radius * var.uniform(-0.6, 0.6)
        gray = int(var.integers(0, 256))
        inside = (np.abs(xs - ox) <= w / 2.0) & (np.abs(ys - oy) <= h / 2.0)
        img = np.where(inside[..., None], np.int32(gray), img)
    elif variant == "noise_blur":
        passes = max(1, int(math.floor(BLUR_PASSES[severity - 1] * unit * unit + 0.5)))
        img = _binomial_blur(img, passes)
        noise = np.floor(_approx_normal(var, (size, size, 3)) * NOISE_STD[severity - 1] + 0.5).astype(np.int32)
        img = img + noise
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------


_SHARED_CACHE_BYTES = 1 << 30  # rendered images kept per process, over all data sets (oldest set dropped first)
_RENDERED: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # (split, size, ..., scene) -> (images, rendered?)


class BuiltinShapes(torch.utils.data.Dataset):
    """Procedural shapes: ``ds[i] -> (uint8 tensor (3, H, W), int label)``; label = i % num_classes."""

    def __init__(self, split: str = "train", size: int | None = None, img_size: int = 32, seed: int = 0,
                 family: str = "main", variant: str = "clean", severity: int = 3,
                 scene: SceneParams | None = None, cache_mb: float = 512.0) -> None:
        if split not in SPLITS:
            raise ConfigError(f"BuiltinShapes split={split!r} is not one of {SPLITS}")
        if family not in FAMILIES:
            raise ConfigError(f"BuiltinShapes family={family!r} is not one of {FAMILIES}")
        if variant not in VARIANTS:
            raise ConfigError(f"BuiltinShapes variant={variant!r} is not one of {VARIANTS}")
        if not isinstance(severity, int) or not 1 <= severity <= 5:
            raise ConfigError(f"BuiltinShapes severity={severity!r} must be an int in 1..5")
        if not isinstance(img_size, int) or img_size < 8:
            raise ConfigError(f"BuiltinShapes img_size={img_size!r} must be an int >= 8")
        size = DEFAULT_SIZES[split] if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ConfigError(f"BuiltinShapes size={size!r} must be a positive int")
        if not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"BuiltinShapes seed={seed!r} must be a non-negative int")
        self.split, self.size, self.img_size, self.seed = split, size, img_size, seed
        self.family, self.variant, self.severity = family, variant, severity
        self.scene = SceneParams() if scene is None else scene
        shapes = MAIN_SHAPES if family == "main" else HELDOUT_SHAPES
        self.classes: list[str] = list(shapes)
        self._sdfs = list(shapes.values())
        # lazily filled cache of rendered images, shared by every instance of the same images in this process
        # (each suite of an evaluation builds its own data sets): each image is rendered at most once per process
        nbytes = size * 3 * img_size * img_size
        self._cache, self._cached = None, np.zeros(size, dtype=bool)
        if nbytes <= cache_mb * 2**20:
            key = (split, size, img_size, seed, family, variant, severity, self.scene)
            if key not in _RENDERED:
                while _RENDERED and sum(c.nbytes for c, _ in _RENDERED.values()) + nbytes > _SHARED_CACHE_BYTES:
                    _RENDERED.pop(next(iter(_RENDERED)))  # the oldest set goes first
                _RENDERED[key] = (np.zeros((size, 3, img_size, img_size), np.uint8), np.zeros(size, dtype=bool))
            self._cache, self._cached = _RENDERED[key]

    @property
    def num_classes(self) -> int:
        """Number of classes of this family."""
        return len(self.classes)

    @property
    def targets(self) -> list[int]:
        """Labels of all images, in index order (no rendering needed)."""
        return [i % self.num_classes for i in range(self.size)]

    def __len__(self) -> int:
        return self.size

    def render(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 (3, H, W), rendered from scratch."""
        keys = (self.seed, FAMILIES.index(self.family), SPLITS.index(self.split), index)
        img = render_image(self._sdfs[index % self.num_classes], keys, self.img_size, self.variant,
                           self.severity, self.scene)
        return np.ascontiguousarray(img.transpose(2, 0, 1))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for BuiltinShapes of size {self.size}")
        if self._cache is None:
            img = self.render(index)
        else:
            if not self._cached[index]:
                self._cache[index] = self.render(index)
                self._cached[index] = True
            img = self._cache[index].copy()
        return torch.from_numpy(img), index % self.num_classes

    def __repr__(self) -> str:
        return (f"BuiltinShapes(split={self.split!r}, size={self.size}, img_size={self.img_size}, "
                f"seed={self.seed}, family={self.family!r}, variant={self.variant!r}, severity={self.severity})")


# ----------------------------------------------------------------------------------------------------


class DigitsDataset(torch.utils.data.Dataset):
    """scikit-learn's bundled 8x8 digits as RGB uint8 ``(3, S, S)`` (bilinear upscaling, exact arithmetic)."""

    SPLIT_SEED = 0
    TEST_FRACTION = 0.2

    def __init__(self, split: str = "train", img_size: int = 32) -> None:
        from sklearn.datasets import load_digits as _sk_load_digits

        if split not in ("train", "test"):
            raise ConfigError(f"digits split={split!r} is not one of ('train', 'test')")
        if not isinstance(img_size, int) or img_size < 8:
            raise ConfigError(f"digits img_size={img_size!r} must be an int >= 8")
        data = _sk_load_digits()
        images = data.images.astype(np.float64) / 16.0  # (1797, 8, 8) in [0, 1]
        labels = data.target.astype(np.int64)
        # deterministic stratified 80/20 split: per class a seeded permutation, first 20% -> test
        rng = np.random.default_rng(self.SPLIT_SEED)
        test = np.zeros(len(labels), dtype=bool)
        for c in range(10):
            idx = np.flatnonzero(labels == c)
            idx = idx[rng.permutation(len(idx))]
            test[idx[: int(round(len(idx) * self.TEST_FRACTION))]] = True
        keep = np.flatnonzero(test if split == "test" else ~test)
        up = _upsample_bilinear(images[keep], img_size)  # (N, S, S) in [0, 1]
        gray = np.floor(up * 255.0 + 0.5).astype(np.uint8)
        self.images = torch.from_numpy(np.ascontiguousarray(np.repeat(gray[:, None], 3, axis=1)))
        self.labels = labels[keep]
        self.split, self.img_size = split, img_size
        self.classes = [str(c) for c in range(10)]

    @property
    def num_classes(self) -> int:
        """Number of classes (10)."""
        return 10

    @property
    def targets(self) -> list[int]:
        """Labels in index order."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"DigitsDataset(split={self.split!r}, img_size={self.img_size}, n={len(self)})"


def _upsample_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) -> (N, size, size), bilinear with half-pixel centres and edge clamping."""
    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * (n / size) - 0.5, 0.0, n - 1.0)
        i0 = np.minimum(np.floor(pos).astype(np.int64), n - 2)
        return i0, i0 + 1, pos - i0

    r0, r1, fr = axis(x.shape[1])
    c0, c1, fc = axis(x.shape[2])
    rows = x[:, r0] * (1.0 - fr)[None, :, None] + x[:, r1] * fr[None, :, None]  # (N, size, w)
    return rows[:, :, c0] * (1.0 - fc) + rows[:, :, c1] * fc


def load_digits(split: str = "train", img_size: int = 32) -> DigitsDataset:
    """scikit-learn digits (no download) with a deterministic stratified 80/20 train/test split."""
    return DigitsDataset(split=split, img_size=img_size)
